//! The four topics. Every message is keyed by transaction id so one transaction's events
//! stay in one partition, in order.

use std::fmt;

/// A logical topic; its full name is `<prefix>.<suffix>` (see [`Topics`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// New and re-enqueued transactions for the payment processor.
    TransactionsPending,
    /// Authenticated provider callbacks for the callback processor.
    CallbacksReceived,
    /// Terminal transactions for the callback dispatcher.
    TransactionsCompleted,
    /// Messages no handler could process, with the reason.
    Dlq,
}

impl Topic {
    pub const ALL: [Topic; 4] = [
        Self::TransactionsPending,
        Self::CallbacksReceived,
        Self::TransactionsCompleted,
        Self::Dlq,
    ];

    pub fn suffix(self) -> &'static str {
        match self {
            Self::TransactionsPending => "transactions.pending",
            Self::CallbacksReceived => "callbacks.received",
            Self::TransactionsCompleted => "transactions.completed",
            Self::Dlq => "dlq",
        }
    }

    pub fn from_suffix(suffix: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.suffix() == suffix)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.suffix())
    }
}

/// Full topic names for one deployment (tests use a unique prefix each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn name(&self, topic: Topic) -> String {
        format!("{}.{}", self.prefix, topic.suffix())
    }

    /// The logical topic of a full name, if it belongs to this deployment.
    pub fn parse(&self, full: &str) -> Option<Topic> {
        full.strip_prefix(&self.prefix)?
            .strip_prefix('.')
            .and_then(Topic::from_suffix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let topics = Topics::new("paygate");
        assert_eq!(
            topics.name(Topic::TransactionsPending),
            "paygate.transactions.pending"
        );
        for t in Topic::ALL {
            assert_eq!(topics.parse(&topics.name(t)), Some(t));
            assert_eq!(Topics::new("other").parse(&topics.name(t)), None);
        }
    }
}
