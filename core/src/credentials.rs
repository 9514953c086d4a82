//! Who a client is: the (user, password, vhost) triple that selects its hub, and the SASL
//! responses it can arrive in.

use crate::table::FieldTable;
use std::fmt;

/// A password. It never prints: `Debug` and `Display` show `***`, so it cannot leak into logs,
/// metrics or error texts by accident.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Secret(String);

impl Secret {
    /// Wraps a password.
    #[must_use]
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The password itself, for the one place that needs it: the upstream SASL response.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A user and password: what the broker checks at `StartOk`, before any vhost is named.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Account {
    /// User name.
    pub user: String,
    /// Password (never printed).
    pub password: Secret,
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.user)
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.user)
    }
}

/// The pool key of B1: clients with equal credentials share a hub and its upstreams.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Credentials {
    /// User name.
    pub user: String,
    /// Password (never printed).
    pub password: Secret,
    /// Virtual host.
    pub vhost: String,
}

impl Credentials {
    /// The user and password, without the vhost.
    #[must_use]
    pub fn account(&self) -> Account {
        Account {
            user: self.user.clone(),
            password: self.password.clone(),
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.user, self.vhost)
    }
}

impl fmt::Display for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Why a SASL response could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaslError {
    /// A mechanism other than PLAIN and AMQPLAIN.
    UnsupportedMechanism(String),
    /// The response did not have the mechanism's shape.
    Malformed(&'static str),
}

/// Extracts (user, password) from a `StartOk` response.
pub fn parse_sasl(mechanism: &str, response: &[u8]) -> Result<(String, Secret), SaslError> {
    match mechanism {
        "PLAIN" => {
            // [authzid] NUL authcid NUL passwd
            let mut parts = response.split(|&b| b == 0);
            let (_authzid, user, pass) = match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(u), Some(p)) if parts.next().is_none() => (a, u, p),
                _ => {
                    return Err(SaslError::Malformed(
                        "PLAIN response is not authzid\\0user\\0password",
                    ))
                }
            };
            Ok((
                String::from_utf8_lossy(user).into_owned(),
                Secret::new(String::from_utf8_lossy(pass).into_owned()),
            ))
        }
        "AMQPLAIN" => {
            // A field table without its length prefix, holding LOGIN and PASSWORD.
            let table = FieldTable::decode(response)
                .map_err(|_| SaslError::Malformed("AMQPLAIN response is not a field table"))?;
            match (table.get_str("LOGIN"), table.get_str("PASSWORD")) {
                (Some(user), Some(pass)) => Ok((user, Secret::new(pass))),
                _ => Err(SaslError::Malformed(
                    "AMQPLAIN response lacks LOGIN or PASSWORD",
                )),
            }
        }
        other => Err(SaslError::UnsupportedMechanism(other.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::longstr;
    use bytes::BytesMut;

    #[test]
    fn secrets_never_print() {
        let c = Credentials {
            user: "u".into(),
            password: Secret::new("hunter2"),
            vhost: "/".into(),
        };
        assert_eq!(format!("{c:?} {c} {:?}", c.password), "u@/ u@/ ***");
    }

    #[test]
    fn plain_with_and_without_authzid() {
        let (u, p) = parse_sasl("PLAIN", b"\0guest\0pw").unwrap();
        assert_eq!((u.as_str(), p.expose()), ("guest", "pw"));
        let (u, _) = parse_sasl("PLAIN", b"admin\0guest\0pw").unwrap();
        assert_eq!(u, "guest");
        assert!(parse_sasl("PLAIN", b"guest").is_err());
        assert!(parse_sasl("PLAIN", b"\0a\0b\0c").is_err());
    }

    #[test]
    fn amqplain() {
        let t = FieldTable::default()
            .with("LOGIN", longstr("guest"))
            .with("PASSWORD", longstr("pw"));
        let mut buf = BytesMut::new();
        t.encode(&mut buf);
        let (u, p) = parse_sasl("AMQPLAIN", &buf[4..]).unwrap();
        assert_eq!((u.as_str(), p.expose()), ("guest", "pw"));
        assert!(parse_sasl("AMQPLAIN", b"\x05LOGIN").is_err());
    }

    #[test]
    fn other_mechanisms_are_refused() {
        assert_eq!(
            parse_sasl("EXTERNAL", b""),
            Err(SaslError::UnsupportedMechanism("EXTERNAL".into()))
        );
    }
}
