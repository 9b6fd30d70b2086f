//! Money: a positive amount of integer minor units in an ISO 4217 currency.
//!
//! Floats never appear: `{"amount": 1050, "currency": "USD"}` is 10.50 USD. The types here
//! parse and cannot hold an invalid value, so code that has a [`Money`] never re-checks it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why an amount or currency was refused. Each message names the rule that was broken so an
/// API error can pass it straight to the merchant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("amount must be a positive integer number of minor units, got {0}")]
    NotPositive(i64),
    #[error(
        "amount must be an integer number of minor units (e.g. 1050 for 10.50), not a fraction"
    )]
    Fractional,
    #[error("amount does not fit in a 64-bit integer of minor units")]
    Overflow,
    #[error("amount must be a JSON integer of minor units")]
    NotANumber,
    #[error("currency must be a three-letter ISO 4217 code, got {0:?}")]
    MalformedCurrency(String),
    #[error("currency {0:?} is not an ISO 4217 currency")]
    UnknownCurrency(String),
    #[error("currency {0} has no minor unit (funds, metals and testing codes cannot be paid)")]
    NotPayable(String),
}

/// An ISO 4217 currency that can be paid in: it has a defined number of minor units.
///
/// Codes such as `XAU` (gold) or `XXX` (no currency) exist in the standard but have no
/// exponent, so an amount in "minor units" would be meaningless; they are refused.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency(iso_currency::Currency);

impl Currency {
    /// Parses an upper-case three-letter code. Lower case is refused rather than guessed at:
    /// the API contract is the ISO form.
    pub fn parse(code: &str) -> Result<Self, MoneyError> {
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(MoneyError::MalformedCurrency(code.to_owned()));
        }
        let currency = iso_currency::Currency::from_code(code)
            .ok_or_else(|| MoneyError::UnknownCurrency(code.to_owned()))?;
        if currency.exponent().is_none() {
            return Err(MoneyError::NotPayable(code.to_owned()));
        }
        Ok(Self(currency))
    }

    /// The three-letter code, e.g. `"USD"`.
    pub fn code(&self) -> &'static str {
        self.0.code()
    }

    /// Every code [`Currency::parse`] admits, in order: the API document's enum. Found by
    /// asking `parse` itself about each upper-case three-letter code, so the list cannot
    /// drift from the rule (17,576 look-ups; only the document builder calls it).
    pub fn payable_codes() -> Vec<&'static str> {
        let letters = b'A'..=b'Z';
        let mut codes = Vec::new();
        for a in letters.clone() {
            for b in letters.clone() {
                for c in letters.clone() {
                    let code = [a, b, c];
                    if let Ok(Ok(currency)) = std::str::from_utf8(&code).map(Self::parse) {
                        codes.push(currency.code());
                    }
                }
            }
        }
        codes
    }

    /// Number of digits after the decimal point: 2 for USD, 0 for JPY, 3 for KWD.
    pub fn exponent(&self) -> u32 {
        // `parse` only admits currencies that have an exponent.
        u32::from(self.0.exponent().unwrap_or(0))
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Currency({})", self.code())
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for Currency {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let code = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&code).map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for Currency {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "An ISO 4217 code, upper case, of a currency with minor units",
            ))
            .enum_values(Some(Self::payable_codes()))
            .examples([serde_json::json!("USD")])
            .into()
    }
}

impl utoipa::ToSchema for Currency {}

/// A strictly positive number of minor units. Payments of zero or less do not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Amount(i64);

impl Amount {
    pub fn new(minor_units: i64) -> Result<Self, MoneyError> {
        if minor_units <= 0 {
            return Err(MoneyError::NotPositive(minor_units));
        }
        Ok(Self(minor_units))
    }

    /// Parses an amount from a JSON value, telling a float, an overflow and a string apart,
    /// so the merchant learns exactly what was wrong with `"amount"`.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, MoneyError> {
        match value {
            serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => Self::new(i),
                (None, Some(_), _) => Err(MoneyError::Overflow),
                (None, None, Some(f)) => Err(Self::float_error(f)),
                (None, None, None) => Err(MoneyError::NotANumber),
            },
            _ => Err(MoneyError::NotANumber),
        }
    }

    /// JSON parsers hand integers too large for u64 over as floats, so a float with no
    /// fractional part beyond the i64 range is an overflow; any other float is refused as
    /// a fraction (`10.0` included: amounts are integers, not decimals that happen to be whole).
    fn float_error(f: f64) -> MoneyError {
        if f.fract() == 0.0 && f.abs() >= 9.2e18 {
            MoneyError::Overflow
        } else {
            MoneyError::Fractional
        }
    }

    pub fn minor_units(self) -> i64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct AmountVisitor;
        impl serde::de::Visitor<'_> for AmountVisitor {
            type Value = Amount;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a positive integer number of minor units")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Amount, E> {
                Amount::new(v).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Amount, E> {
                let v = i64::try_from(v).map_err(|_| E::custom(MoneyError::Overflow))?;
                Amount::new(v).map_err(E::custom)
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Amount, E> {
                Err(E::custom(Amount::float_error(v)))
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Amount, E> {
                Err(E::custom(MoneyError::NotANumber))
            }
        }
        d.deserialize_any(AmountVisitor)
    }
}

/// An amount in a currency. Equality is exact: 1000 USD minor units is not 1000 EUR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    pub amount: Amount,
    pub currency: Currency,
}

impl Money {
    pub fn new(amount: Amount, currency: Currency) -> Self {
        Self { amount, currency }
    }

    /// Convenience for code that holds raw parts (database rows, provider messages).
    pub fn from_parts(minor_units: i64, currency_code: &str) -> Result<Self, MoneyError> {
        Ok(Self::new(
            Amount::new(minor_units)?,
            Currency::parse(currency_code)?,
        ))
    }
}

impl fmt::Display for Money {
    /// `10.50 USD`, `1000 JPY`, `1.005 KWD`: the decimal form, for people and logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        MinorUnits(self.amount.minor_units(), self.currency).fmt(f)
    }
}

/// Any signed count of minor units shown in its currency's decimal form (`-0.05 USD`): for
/// balances and ledger entries, which may be zero or negative where a [`Money`] may not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinorUnits(pub i64, pub Currency);

impl fmt::Display for MinorUnits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self(units, currency) = *self;
        let sign = if units < 0 { "-" } else { "" };
        let magnitude = units.unsigned_abs();
        let exponent = currency.exponent();
        match 10_u64.checked_pow(exponent) {
            Some(divisor) if exponent > 0 => write!(
                f,
                "{sign}{}.{:0width$} {currency}",
                magnitude / divisor,
                magnitude % divisor,
                width = exponent as usize
            ),
            _ => write!(f, "{sign}{magnitude} {currency}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn currencies_parse_with_their_exponents() {
        assert_eq!(Currency::parse("USD").map(|c| c.exponent()), Ok(2));
        assert_eq!(Currency::parse("JPY").map(|c| c.exponent()), Ok(0));
        assert_eq!(Currency::parse("KWD").map(|c| c.exponent()), Ok(3));
    }

    #[test]
    fn bad_currencies_are_refused() {
        for bad in ["usd", "US", "USDD", "", "U$D", "ZZZ", "ABC"] {
            assert!(Currency::parse(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(
            Currency::parse("ZZZ"),
            Err(MoneyError::UnknownCurrency("ZZZ".into()))
        );
        assert_eq!(
            Currency::parse("XAU"),
            Err(MoneyError::NotPayable("XAU".into()))
        );
    }

    #[test]
    fn amounts_must_be_positive_integers() {
        assert_eq!(
            Amount::from_json(&json!(1050)).map(Amount::minor_units),
            Ok(1050)
        );
        assert_eq!(
            Amount::from_json(&json!(0)),
            Err(MoneyError::NotPositive(0))
        );
        assert_eq!(
            Amount::from_json(&json!(-5)),
            Err(MoneyError::NotPositive(-5))
        );
        assert_eq!(Amount::from_json(&json!(10.5)), Err(MoneyError::Fractional));
        assert_eq!(Amount::from_json(&json!(10.0)), Err(MoneyError::Fractional));
        assert_eq!(Amount::from_json(&json!(1e3)), Err(MoneyError::Fractional));
        assert_eq!(
            Amount::from_json(&json!(u64::MAX)),
            Err(MoneyError::Overflow)
        );
        assert_eq!(
            Amount::from_json(&json!("1050")),
            Err(MoneyError::NotANumber)
        );
        assert_eq!(Amount::from_json(&json!(null)), Err(MoneyError::NotANumber));
        assert_eq!(
            Amount::from_json(&json!(i64::MAX)).map(Amount::minor_units),
            Ok(i64::MAX)
        );
    }

    #[test]
    fn huge_integers_in_raw_json_are_overflow_not_float() {
        let parsed: Result<Amount, _> = serde_json::from_str("99999999999999999999999");
        let message = parsed.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("64-bit"), "{message}");
        let parsed: Result<Amount, _> = serde_json::from_str("9223372036854775808");
        let message = parsed.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("64-bit"), "{message}");
        let parsed: Result<Amount, _> = serde_json::from_str("12.75");
        let message = parsed.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("not a fraction"), "{message}");
    }

    #[test]
    fn money_displays_in_decimal_form() {
        let m = |a, c| Money::from_parts(a, c).map(|m| m.to_string());
        assert_eq!(m(1050, "USD").as_deref(), Ok("10.50 USD"));
        assert_eq!(m(5, "USD").as_deref(), Ok("0.05 USD"));
        assert_eq!(m(1000, "JPY").as_deref(), Ok("1000 JPY"));
        assert_eq!(m(1005, "KWD").as_deref(), Ok("1.005 KWD"));
    }

    #[test]
    fn money_round_trips_through_json() {
        let m = Money::from_parts(1050, "EUR").ok();
        let text = serde_json::to_string(&m).unwrap_or_default();
        assert_eq!(text, r#"{"amount":1050,"currency":"EUR"}"#);
        let back: Option<Money> = serde_json::from_str(&text).ok();
        assert_eq!(back, m);
    }

    proptest::proptest! {
        #[test]
        fn any_positive_i64_is_an_amount(n in 1_i64..=i64::MAX) {
            proptest::prop_assert_eq!(Amount::new(n).map(Amount::minor_units), Ok(n));
        }

        #[test]
        fn no_non_positive_i64_is_an_amount(n in i64::MIN..=0) {
            proptest::prop_assert!(Amount::new(n).is_err());
        }
    }
}
