use serde::{Deserialize, Serialize};
use std::{fmt, str::FromStr};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?}; expected one of: {expected}")]
pub struct UnknownState {
    what: &'static str,
    value: String,
    expected: &'static str,
}

impl UnknownState {
    pub(crate) fn new(what: &'static str, value: &str, expected: &'static str) -> Self {
        Self {
            what,
            value: value.chars().take(40).collect(),
            expected,
        }
    }
}

macro_rules! text_enum {
    ($(#[$doc:meta])* $name:ident, $what:literal, { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl FromStr for $name {
            type Err = UnknownState;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownState::new($what, s, concat!($($text, " "),+))),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum!(
    /// A tenant's lifecycle state:
    /// `requested → creating → ready ⇄ suspended`, `ready|suspended → deleting → deleted`,
    /// and `failed` with the step and error recorded.
    TenantState, "tenant state", {
        Requested => "requested",
        Creating => "creating",
        Ready => "ready",
        Suspended => "suspended",
        Deleting => "deleting",
        Deleted => "deleted",
        Failed => "failed",
    }
);

impl TenantState {
    /// States a crash can leave behind, which reconcile finishes or undoes.
    pub fn is_transient(self) -> bool {
        matches!(self, Self::Requested | Self::Creating | Self::Deleting)
    }

    /// Whether the lifecycle allows moving from `self` to `to`.
    pub fn can_become(self, to: TenantState) -> bool {
        use TenantState::*;
        matches!(
            (self, to),
            (Requested, Creating)
                | (Creating, Ready)
                | (Requested | Creating, Failed)
                | (Ready, Suspended)
                | (Suspended, Ready)
                | (Ready | Suspended | Failed, Deleting)
                | (Deleting, Deleted)
        )
    }
}

text_enum!(
    /// A registered server: `active` takes new tenants, `draining` keeps its tenants but takes no new ones.
    ServerState, "server state", {
        Active => "active",
        Draining => "draining",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_text() {
        for s in TenantState::ALL {
            assert_eq!(s.as_str().parse::<TenantState>().unwrap(), *s);
        }
        let e = "paused".parse::<TenantState>().unwrap_err().to_string();
        assert!(e.contains("\"paused\"") && e.contains("suspended"), "{e}");
    }

    #[test]
    fn lifecycle_edges() {
        use TenantState::*;
        assert!(Ready.can_become(Suspended) && Suspended.can_become(Ready));
        assert!(Ready.can_become(Deleting) && Deleting.can_become(Deleted));
        assert!(!Deleted.can_become(Ready));
        assert!(!Requested.can_become(Ready));
        assert!(Creating.is_transient() && !Ready.is_transient());
    }
}
