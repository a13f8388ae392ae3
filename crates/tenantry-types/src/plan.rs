use serde::{Deserialize, Serialize};
use std::str::FromStr;

use crate::UnknownState;

/// The agents a task can run on, with the estimated cost of one task in cents.
pub const AGENTS: &[(Agent, u32)] = &[
    (Agent::Claude, 50),
    (Agent::Codex, 30),
    (Agent::Perplexity, 20),
    (Agent::Cursor, 25),
    (Agent::Opencode, 0),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Agent {
    Claude,
    Codex,
    Perplexity,
    Cursor,
    Opencode,
}

impl Agent {
    pub fn as_str(self) -> &'static str {
        match self {
            Agent::Claude => "claude",
            Agent::Codex => "codex",
            Agent::Perplexity => "perplexity",
            Agent::Cursor => "cursor",
            Agent::Opencode => "opencode",
        }
    }

    pub fn cost_cents(self) -> u32 {
        AGENTS
            .iter()
            .find(|(a, _)| *a == self)
            .map_or(0, |(_, cost)| *cost)
    }
}

impl FromStr for Agent {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AGENTS
            .iter()
            .map(|(a, _)| *a)
            .find(|a| a.as_str() == s)
            .ok_or_else(|| UnknownState::new("agent", s, "claude codex perplexity cursor opencode"))
    }
}

/// What a plan allows and costs. `tasks_per_month: None` is unlimited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub name: String,
    pub tasks_per_month: Option<u32>,
    pub requests_per_minute: u32,
    pub agents: Vec<Agent>,
    pub api_access: bool,
    pub pool_size: u32,
    /// The monthly price, in cents (recurring revenue).
    pub price_cents: u32,
    /// 0 to 9: when a server's connection budget is contended, waiting requests of a
    /// higher priority get connections first (bounded, so a lower one never starves).
    pub priority: u8,
}

/// The highest plan priority.
pub const MAX_PRIORITY: u8 = 9;

impl Plan {
    /// The plan table of the product contract.
    pub fn defaults() -> Vec<Plan> {
        let all: Vec<Agent> = AGENTS.iter().map(|(a, _)| *a).collect();
        vec![
            Plan {
                name: "free".into(),
                tasks_per_month: Some(10),
                requests_per_minute: 5,
                agents: vec![Agent::Opencode],
                api_access: false,
                pool_size: 2,
                price_cents: 0,
                priority: 0,
            },
            Plan {
                name: "pro".into(),
                tasks_per_month: Some(100),
                requests_per_minute: 60,
                agents: all.clone(),
                api_access: false,
                pool_size: 5,
                price_cents: 1900,
                priority: 1,
            },
            Plan {
                name: "enterprise".into(),
                tasks_per_month: None,
                requests_per_minute: 600,
                agents: all,
                api_access: true,
                pool_size: 10,
                price_cents: 9900,
                priority: 2,
            },
        ]
    }

    pub fn allows(&self, agent: Agent) -> bool {
        self.agents.contains(&agent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_plans_match_the_contract() {
        let plans = Plan::defaults();
        let free = &plans[0];
        assert_eq!(free.tasks_per_month, Some(10));
        assert!(free.allows(Agent::Opencode) && !free.allows(Agent::Claude));
        let ent = &plans[2];
        assert_eq!(ent.tasks_per_month, None);
        assert_eq!(
            plans
                .iter()
                .map(|p| (p.price_cents, p.priority))
                .collect::<Vec<_>>(),
            [(0, 0), (1900, 1), (9900, 2)]
        );
        assert!(ent.api_access && ent.allows(Agent::Claude));
        assert_eq!(Agent::Claude.cost_cents(), 50);
        assert_eq!("cursor".parse::<Agent>().unwrap(), Agent::Cursor);
        assert!("gpt".parse::<Agent>().is_err());
    }
}
