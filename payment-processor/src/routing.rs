//! Which gateways may take a transaction, in priority order.
//!
//! A transaction that names a gateway goes only there (no failover: the merchant chose).
//! Otherwise the first configured rule matching its kind, currency and country (from the
//! metadata key `country`) gives an ordered list. The gateway of an earlier *ambiguous*
//! attempt is the only candidate for the retry: that provider may have executed it, and
//! another provider would not know our idempotency reference.

use paygate_core::config::RouteRule;
use paygate_core::domain::{Currency, GatewayName, Transaction, TransactionKind};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Highest priority first.
    pub gateways: Vec<GatewayName>,
    /// Whether a retryable failure or an open breaker may move on to the next one.
    pub failover: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("no routing rule matches this transaction")]
    NoRoute,
    #[error("gateway {0} is not configured")]
    UnknownGateway(GatewayName),
    #[error("none of this route's gateways is enabled for the merchant")]
    NoEnabledGateway,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("processor.routes[{index}]: {message}")]
pub struct RouteConfigError {
    pub index: usize,
    pub message: String,
}

#[derive(Debug, Clone)]
struct Rule {
    kind: Option<TransactionKind>,
    currency: Option<Currency>,
    country: Option<String>,
    route: Route,
}

#[derive(Debug, Clone, Default)]
pub struct Router {
    rules: Vec<Rule>,
    known: Vec<GatewayName>,
}

impl Router {
    /// Compiles the rules, refusing names of gateways that are not configured.
    pub fn new(rules: &[RouteRule], known: Vec<GatewayName>) -> Result<Self, RouteConfigError> {
        let mut compiled = Vec::with_capacity(rules.len());
        for (index, rule) in rules.iter().enumerate() {
            let error = |message: String| RouteConfigError { index, message };
            let kind = rule
                .kind
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(|e| error(format!("kind: {e}")))?;
            let currency = rule
                .currency
                .as_deref()
                .map(Currency::parse)
                .transpose()
                .map_err(|e| error(format!("currency: {e}")))?;
            let mut gateways = Vec::with_capacity(rule.gateways.len());
            for name in &rule.gateways {
                let name = GatewayName::parse(name).map_err(|e| error(e.to_string()))?;
                if !known.contains(&name) {
                    return Err(error(format!("gateway {name} is not configured")));
                }
                gateways.push(name);
            }
            let country = rule.country.as_ref().map(|c| c.to_ascii_uppercase());
            compiled.push(Rule {
                kind,
                currency,
                country,
                route: Route {
                    gateways,
                    failover: rule.failover,
                },
            });
        }
        Ok(Self {
            rules: compiled,
            known,
        })
    }

    /// [`Router::route`] kept to the gateways the merchant may use (`None`: all), in the
    /// route's order.
    pub fn route_within(
        &self,
        transaction: &Transaction,
        enabled: Option<&[GatewayName]>,
    ) -> Result<Route, RouteError> {
        let mut route = self.route(transaction)?;
        if let Some(enabled) = enabled {
            route.gateways.retain(|g| enabled.contains(g));
            if route.gateways.is_empty() {
                return Err(RouteError::NoEnabledGateway);
            }
        }
        Ok(route)
    }

    pub fn route(&self, transaction: &Transaction) -> Result<Route, RouteError> {
        if let Some(requested) = &transaction.gateway {
            if !self.known.contains(requested) {
                return Err(RouteError::UnknownGateway(requested.clone()));
            }
            return Ok(Route {
                gateways: vec![requested.clone()],
                failover: false,
            });
        }
        let country = transaction
            .metadata
            .get("country")
            .and_then(|c| c.as_str())
            .map(str::to_ascii_uppercase);
        self.rules
            .iter()
            .find(|rule| {
                rule.kind.is_none_or(|k| k == transaction.kind)
                    && rule
                        .currency
                        .is_none_or(|c| c == transaction.money.currency)
                    && rule
                        .country
                        .as_ref()
                        .is_none_or(|c| country.as_ref() == Some(c))
            })
            .map(|rule| rule.route.clone())
            .ok_or(RouteError::NoRoute)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use paygate_core::domain::{CustomerReference, MerchantId, Money, NewTransaction};

    fn name(n: &str) -> GatewayName {
        GatewayName::parse(n).unwrap_or_else(|e| panic!("{e}"))
    }

    fn tx(
        kind: TransactionKind,
        currency: &str,
        gateway: Option<&str>,
        country: Option<&str>,
    ) -> Transaction {
        let metadata = match country {
            Some(c) => serde_json::json!({ "country": c }),
            None => serde_json::json!({}),
        };
        Transaction::create(
            NewTransaction {
                merchant_id: MerchantId::new(),
                kind,
                money: Money::from_parts(100, currency).unwrap_or_else(|e| panic!("{e}")),
                customer: CustomerReference::parse("c").unwrap_or_else(|e| panic!("{e}")),
                gateway: gateway.map(name),
                callback_url: None,
                metadata,
            },
            Utc::now(),
        )
    }

    fn rule(
        kind: Option<&str>,
        currency: Option<&str>,
        country: Option<&str>,
        gateways: &[&str],
        failover: bool,
    ) -> RouteRule {
        RouteRule {
            kind: kind.map(String::from),
            currency: currency.map(String::from),
            country: country.map(String::from),
            gateways: gateways.iter().map(|g| g.to_string()).collect(),
            failover,
        }
    }

    #[test]
    fn a_merchant_restricted_to_some_gateways_is_routed_only_to_those() -> Result<(), RouteError> {
        let router = router();
        let deposit = tx(TransactionKind::Deposit, "USD", None, None);
        let all = router.route(&deposit)?;
        assert!(
            all.gateways.len() >= 2,
            "the test router routes USD deposits to several"
        );
        let second = all.gateways[1].clone();
        let within = router.route_within(&deposit, Some(std::slice::from_ref(&second)))?;
        assert_eq!(within.gateways, vec![second]);
        assert_eq!(router.route_within(&deposit, None)?, all);
        assert_eq!(
            router.route_within(&deposit, Some(&[name("elsewhere")])),
            Err(RouteError::NoEnabledGateway)
        );
        Ok(())
    }

    fn router() -> Router {
        Router::new(
            &[
                rule(Some("withdrawal"), Some("NGN"), None, &["soap"], false),
                rule(None, Some("NGN"), Some("ng"), &["json", "proto"], true),
                rule(None, None, None, &["proto", "json"], true),
            ],
            vec![name("json"), name("soap"), name("proto")],
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn first_matching_rule_wins() {
        let r = router();
        let names = |t: &Transaction| r.route(t).map(|route| route.gateways);
        assert_eq!(
            names(&tx(TransactionKind::Withdrawal, "NGN", None, None)),
            Ok(vec![name("soap")])
        );
        assert_eq!(
            names(&tx(TransactionKind::Deposit, "NGN", None, Some("NG"))),
            Ok(vec![name("json"), name("proto")])
        );
        assert_eq!(
            names(&tx(TransactionKind::Deposit, "NGN", None, Some("GH"))),
            Ok(vec![name("proto"), name("json")])
        );
        assert_eq!(
            names(&tx(TransactionKind::Deposit, "USD", None, None)),
            Ok(vec![name("proto"), name("json")])
        );
    }

    #[test]
    fn an_explicit_gateway_is_the_only_candidate_and_never_fails_over() {
        let r = router();
        let route = r.route(&tx(TransactionKind::Deposit, "USD", Some("soap"), None));
        assert_eq!(
            route,
            Ok(Route {
                gateways: vec![name("soap")],
                failover: false
            })
        );
        assert_eq!(
            r.route(&tx(TransactionKind::Deposit, "USD", Some("nowhere"), None)),
            Err(RouteError::UnknownGateway(name("nowhere")))
        );
    }

    #[test]
    fn no_rule_no_route_and_bad_rules_are_refused() {
        let r = Router::new(
            &[rule(None, Some("EUR"), None, &["json"], true)],
            vec![name("json")],
        )
        .unwrap_or_default();
        assert_eq!(
            r.route(&tx(TransactionKind::Deposit, "USD", None, None)),
            Err(RouteError::NoRoute)
        );
        assert!(Router::new(
            &[rule(None, None, None, &["ghost"], true)],
            vec![name("json")]
        )
        .is_err());
        assert!(Router::new(
            &[rule(Some("refund"), None, None, &["json"], true)],
            vec![name("json")]
        )
        .is_err());
        assert!(Router::new(
            &[rule(None, Some("ZZZ"), None, &["json"], true)],
            vec![name("json")]
        )
        .is_err());
    }
}
