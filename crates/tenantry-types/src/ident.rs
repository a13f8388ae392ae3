use std::fmt;

/// Why a name cannot be a PostgreSQL identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentError {
    #[error("an SQL identifier cannot be empty")]
    Empty,
    #[error("an SQL identifier is at most 63 bytes; this one has {0}")]
    TooLong(usize),
    #[error("an SQL identifier cannot hold a NUL byte")]
    Nul,
}

/// A validated PostgreSQL identifier (database, role, schema or table name).
///
/// The one way a name reaches SQL text: [`Ident::quoted`] (or `Display`) always
/// double-quotes it, doubling any `"` inside, so no value can end the identifier early.
/// Names longer than PostgreSQL's 63 bytes are refused rather than silently truncated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ident(pub(crate) String);

impl Ident {
    pub fn new(name: impl Into<String>) -> Result<Self, IdentError> {
        let name = name.into();
        if name.is_empty() {
            return Err(IdentError::Empty);
        }
        if name.len() > 63 {
            return Err(IdentError::TooLong(name.len()));
        }
        if name.contains('\0') {
            return Err(IdentError::Nul);
        }
        Ok(Self(name))
    }

    /// The name as PostgreSQL stores it (unquoted); for parameters and catalog lookups.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name quoted for SQL text.
    pub fn quoted(&self) -> String {
        format!("\"{}\"", self.0.replace('"', "\"\""))
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.quoted())
    }
}

/// A string as an SQL literal, for the few statements that take no bind parameters
/// (`CREATE ROLE … PASSWORD`). Single quotes are doubled; under
/// `standard_conforming_strings` (on since PostgreSQL 9.1) nothing else is special.
/// Refuses NUL, which PostgreSQL cannot store.
pub fn sql_literal(value: &str) -> Result<String, IdentError> {
    if value.contains('\0') {
        return Err(IdentError::Nul);
    }
    Ok(format!("'{}'", value.replace('\'', "''")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(Ident::new("t_1").unwrap().quoted(), "\"t_1\"");
        assert_eq!(Ident::new("a\"b").unwrap().quoted(), "\"a\"\"b\"");
        assert_eq!(
            Ident::new("x\"; DROP DATABASE y; --").unwrap().to_string(),
            "\"x\"\"; DROP DATABASE y; --\""
        );
        assert_eq!(Ident::new(""), Err(IdentError::Empty));
        assert_eq!(Ident::new("a\0b"), Err(IdentError::Nul));
        assert_eq!(Ident::new("é".repeat(32)), Err(IdentError::TooLong(64)));
        assert!(Ident::new("a".repeat(63)).is_ok());
    }

    #[test]
    fn literals() {
        assert_eq!(sql_literal("it's").unwrap(), "'it''s'");
        assert_eq!(sql_literal("a\\b").unwrap(), "'a\\b'");
        assert!(sql_literal("a\0").is_err());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Undoes `quoted()`: strips the outer quotes and halves every doubled quote;
    /// `None` if the text is not a single well-formed quoted identifier.
    fn unquote(text: &str) -> Option<String> {
        let inner = text.strip_prefix('"')?.strip_suffix('"')?;
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '"' {
                // Inside a quoted identifier a lone quote would end it: only "" may appear.
                if chars.next() != Some('"') {
                    return None;
                }
            }
            out.push(c);
        }
        Some(out)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn any_text_is_refused_or_quoted_so_it_reads_back_exactly(
            name in prop_oneof![
                "\\PC{0,80}",
                "[\"';\\\\ a-z\\x00]{0,70}",
                "[a-zé☃𝄞\"]{20,40}",
            ]
        ) {
            match Ident::new(name.clone()) {
                Ok(ident) => {
                    prop_assert!(!name.is_empty() && name.len() <= 63 && !name.contains('\0'));
                    prop_assert_eq!(unquote(&ident.quoted()), Some(name));
                }
                Err(IdentError::Empty) => prop_assert!(name.is_empty()),
                Err(IdentError::TooLong(n)) => prop_assert!(n == name.len() && n > 63),
                Err(IdentError::Nul) => prop_assert!(name.contains('\0')),
            }
        }

        #[test]
        fn literals_read_back_exactly(value in "\\PC{0,60}") {
            let lit = sql_literal(&value).unwrap();
            let inner = lit.strip_prefix('\'').unwrap().strip_suffix('\'').unwrap();
            prop_assert_eq!(inner.replace("''", "'"), value);
            prop_assert!(!inner.replace("''", "").contains('\''));
        }
    }
}
