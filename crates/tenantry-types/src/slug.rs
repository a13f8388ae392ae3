use serde::{Deserialize, Serialize};
use std::{fmt, str::FromStr};

/// Why a slug or server name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?} is not valid: {rule}")]
pub struct SlugError {
    what: &'static str,
    value: String,
    rule: &'static str,
}

fn check(what: &'static str, value: &str, min: usize, max: usize) -> Result<(), SlugError> {
    let rule = match what {
        "tenant slug" => {
            "use 2 to 40 characters: a lowercase letter, then lowercase letters, digits or '-'"
        }
        _ => "use 1 to 40 characters: a lowercase letter, then lowercase letters, digits or '-'",
    };
    let bytes = value.as_bytes();
    let ok = (min..=max).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes[1..]
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    if ok {
        Ok(())
    } else {
        Err(SlugError {
            what,
            value: value.chars().take(80).collect(),
            rule,
        })
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $min:literal, $max:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(value: &str) -> Result<Self, SlugError> {
                check($what, value, $min, $max).map(|()| Self(value.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = SlugError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = SlugError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(s: $name) -> String {
                s.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// A tenant's public name: `^[a-z][a-z0-9-]{1,39}$`.
    Slug, "tenant slug", 2, 40
);
name_type!(
    /// A registered PostgreSQL server's name: `^[a-z][a-z0-9-]{0,39}$`.
    ServerName, "server name", 1, 40
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_follow_the_contract() {
        for good in [
            "ab",
            "acme",
            "acme-2",
            "a0",
            &format!("a{}", "b".repeat(39)),
        ] {
            assert!(Slug::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "a",
            "Acme",
            "1acme",
            "-acme",
            "ac_me",
            "ac me",
            "acmé",
            "a\0b",
            "a\"b",
            &format!("a{}", "b".repeat(40)),
        ] {
            assert!(Slug::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn errors_say_what_to_do() {
        let e = Slug::parse("Bad Slug").unwrap_err().to_string();
        assert!(e.contains("tenant slug \"Bad Slug\""), "{e}");
        assert!(e.contains("lowercase letter"), "{e}");
    }

    #[test]
    fn deserialising_validates() {
        assert!(serde_json::from_str::<Slug>("\"acme\"").is_ok());
        assert!(serde_json::from_str::<Slug>("\"ACME\"").is_err());
        assert!(ServerName::parse("a").is_ok());
    }
}
