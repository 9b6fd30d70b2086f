//! `[kafka.security]`: how every Kafka client of a paygate process authenticates to the
//! brokers and encrypts the connection. Each setting is one of librdkafka's own properties
//! (named beside it), passed through unchanged, so the librdkafka documentation is the
//! reference for what each value means; nothing is re-implemented here.
//!
//! Typed rather than a free map of librdkafka properties: a free map would let a
//! deployment override what the pipeline's guarantees rest on (`enable.idempotence`,
//! `acks`, `enable.auto.commit`), and a misspelt key would pass silently. The password is
//! a [`Secret`]: `Debug` never prints it and it is never logged.

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// `security.protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    /// No TLS, no SASL: a broker on a private network (tests, `paygate dev`).
    #[default]
    Plaintext,
    /// TLS.
    Ssl,
    /// SASL without TLS (the password crosses the network in clear with PLAIN).
    SaslPlaintext,
    /// SASL over TLS: what a managed Kafka (Confluent Cloud, MSK, Aiven) asks for.
    SaslSsl,
}

impl SecurityProtocol {
    fn librdkafka(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    fn uses_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }

    fn uses_tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }
}

/// `sasl.mechanism`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    fn librdkafka(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// TLS and SASL settings shared by every producer, consumer and admin client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSecurity {
    /// `security.protocol` (`PAYGATE_KAFKA_SECURITY__PROTOCOL=sasl_ssl`).
    pub protocol: SecurityProtocol,
    /// `sasl.mechanism`; required with a SASL protocol.
    pub sasl_mechanism: Option<SaslMechanism>,
    /// `sasl.username`.
    pub sasl_username: Option<String>,
    /// `sasl.password`: a secret, from the environment or a secret store.
    pub sasl_password: Option<Secret>,
    /// `ssl.ca.location`: a PEM file of the CAs to trust (absent: the system's).
    pub ssl_ca_location: Option<String>,
    /// `ssl.certificate.location`: this client's certificate, for mutual TLS.
    pub ssl_certificate_location: Option<String>,
    /// `ssl.key.location`: this client's private key, for mutual TLS.
    pub ssl_key_location: Option<String>,
    /// `ssl.key.password`, when the key file is encrypted.
    pub ssl_key_password: Option<Secret>,
}

impl KafkaSecurity {
    /// The librdkafka properties to set on every client, in a fixed order. Plaintext sets
    /// only `security.protocol`, librdkafka's default, so a local broker is untouched.
    pub fn librdkafka_properties(&self) -> Vec<(&'static str, String)> {
        let mut properties = vec![("security.protocol", self.protocol.librdkafka().to_owned())];
        let mut add = |key: &'static str, value: Option<&str>| {
            if let Some(value) = value {
                properties.push((key, value.to_owned()));
            }
        };
        if self.protocol.uses_sasl() {
            add(
                "sasl.mechanism",
                self.sasl_mechanism.map(SaslMechanism::librdkafka),
            );
            add("sasl.username", self.sasl_username.as_deref());
            add(
                "sasl.password",
                self.sasl_password.as_ref().map(Secret::expose),
            );
        }
        if self.protocol.uses_tls() {
            add("ssl.ca.location", self.ssl_ca_location.as_deref());
            add(
                "ssl.certificate.location",
                self.ssl_certificate_location.as_deref(),
            );
            add("ssl.key.location", self.ssl_key_location.as_deref());
            add(
                "ssl.key.password",
                self.ssl_key_password.as_ref().map(Secret::expose),
            );
        }
        properties
    }

    /// What makes these settings unusable, each as (key under `kafka.security`, why).
    pub fn problems(&self) -> Vec<(&'static str, &'static str)> {
        let mut problems = Vec::new();
        let blank = |value: Option<&str>| value.is_none_or(|v| v.trim().is_empty());
        if self.protocol.uses_sasl() {
            if self.sasl_mechanism.is_none() {
                problems.push((
                    "sasl_mechanism",
                    "is required with a SASL protocol (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)",
                ));
            }
            if blank(self.sasl_username.as_deref()) {
                problems.push(("sasl_username", "is required with a SASL protocol"));
            }
            if blank(self.sasl_password.as_ref().map(Secret::expose)) {
                problems.push(("sasl_password", "is required with a SASL protocol"));
            }
        } else if self.sasl_mechanism.is_some()
            || self.sasl_username.is_some()
            || self.sasl_password.is_some()
        {
            problems.push((
                "protocol",
                "SASL settings are given but the protocol is not sasl_plaintext or sasl_ssl",
            ));
        }
        let client_tls = [&self.ssl_certificate_location, &self.ssl_key_location];
        let tls_given = self.ssl_ca_location.is_some()
            || client_tls.iter().any(|v| v.is_some())
            || self.ssl_key_password.is_some();
        if tls_given && !self.protocol.uses_tls() {
            problems.push((
                "protocol",
                "TLS settings are given but the protocol is not ssl or sasl_ssl",
            ));
        }
        if client_tls.iter().filter(|v| v.is_some()).count() == 1 {
            problems.push((
                "ssl_key_location",
                "a client certificate and its key go together",
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sasl_ssl() -> KafkaSecurity {
        KafkaSecurity {
            protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: Some(SaslMechanism::ScramSha512),
            sasl_username: Some("paygate".into()),
            sasl_password: Some(Secret::new("hunter2-kafka")),
            ssl_ca_location: Some("/etc/ssl/kafka-ca.pem".into()),
            ..KafkaSecurity::default()
        }
    }

    #[test]
    fn plaintext_sets_only_librdkafkas_default_protocol() {
        let properties = KafkaSecurity::default().librdkafka_properties();
        assert_eq!(
            properties,
            vec![("security.protocol", "plaintext".to_owned())]
        );
        assert!(KafkaSecurity::default().problems().is_empty());
    }

    #[test]
    fn sasl_over_tls_passes_librdkafkas_own_properties() {
        let properties = sasl_ssl().librdkafka_properties();
        let expected = [
            ("security.protocol", "sasl_ssl"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "paygate"),
            ("sasl.password", "hunter2-kafka"),
            ("ssl.ca.location", "/etc/ssl/kafka-ca.pem"),
        ];
        let expected: Vec<_> = expected
            .iter()
            .map(|(k, v)| (*k, (*v).to_owned()))
            .collect();
        assert_eq!(properties, expected);
        assert!(sasl_ssl().problems().is_empty());
    }

    #[test]
    fn the_password_never_shows_in_debug() {
        let printed = format!("{:?}", sasl_ssl());
        assert!(!printed.contains("hunter2"), "{printed}");
    }

    #[test]
    fn incomplete_or_contradictory_settings_are_named() {
        let missing = KafkaSecurity {
            protocol: SecurityProtocol::SaslSsl,
            ..KafkaSecurity::default()
        };
        let keys: Vec<_> = missing.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["sasl_mechanism", "sasl_username", "sasl_password"]);

        let stray = KafkaSecurity {
            sasl_username: Some("paygate".into()),
            ssl_ca_location: Some("/ca.pem".into()),
            ..KafkaSecurity::default()
        };
        let keys: Vec<_> = stray.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["protocol", "protocol"]);

        let half = KafkaSecurity {
            protocol: SecurityProtocol::Ssl,
            ssl_certificate_location: Some("/client.pem".into()),
            ..KafkaSecurity::default()
        };
        let keys: Vec<_> = half.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["ssl_key_location"]);
    }
}
