//! Secrets in settings: values whose `Debug` and `Display` never show them, so a settings
//! struct can derive `Debug` and be logged. The value itself only through `expose()`.

use serde::Deserialize;

/// A secret string (a password, an AWS secret key, a token): shown as `***`.
#[derive(Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself: for the client that needs it, never for a message.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// A URL that may carry credentials (`postgres://user:password@host/db`,
/// `...?password=...`): shown with them replaced by `***` (see [`redact`]).
#[derive(Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> SecretUrl {
        SecretUrl(url.into())
    }

    /// The URL with its credentials: for the client that connects, never for a message.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL without its credentials.
    pub fn redacted(&self) -> String {
        redact(&self.0)
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", redact(&self.0))
    }
}

impl std::fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

/// Query parameters whose value is a secret when their name (lowercased) contains one of
/// these words: `password`, `sslpassword`, `aws_secret_access_key`, `token`, `api_key`...
const SECRET_PARAMS: &[&str] = &["password", "passwd", "secret", "token", "key"];

/// A URL without its secrets, for messages and logs: the password of the user part
/// (`user:***@host`) and the value of every query parameter named like a secret
/// (`?password=***`). Anything else is kept as it is.
pub fn redact(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = match (base.find("://"), base.rfind('@')) {
        (Some(s), Some(at)) if at > s => match base[s + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &base[..s + 3], &base[at..]),
            None => base.to_string(),
        },
        _ => base.to_string(),
    };
    if let Some(query) = query {
        let (query, fragment) = match query.split_once('#') {
            Some((q, f)) => (q, Some(f)),
            None => (query, None),
        };
        let params: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _))
                    if SECRET_PARAMS
                        .iter()
                        .any(|w| name.to_ascii_lowercase().contains(w)) =>
                {
                    format!("{name}=***")
                }
                _ => pair.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
        if let Some(f) = fragment {
            out.push('#');
            out.push_str(f);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_passwords_and_nothing_else() {
        let cases = [
            (
                "postgres://u:secret@h:5432/db",
                "postgres://u:***@h:5432/db",
            ),
            ("postgres://u:p@ss@h/db", "postgres://u:***@h/db"),
            ("postgres://u@h/db", "postgres://u@h/db"),
            ("sqlite://./w.db", "sqlite://./w.db"),
            (
                "postgres://h/db?user=u&password=hunter2&sslmode=require",
                "postgres://h/db?user=u&password=***&sslmode=require",
            ),
            (
                "postgres://u:a@h/db?sslpassword=b&application_name=ymera",
                "postgres://u:***@h/db?sslpassword=***&application_name=ymera",
            ),
            (
                "s3://bucket/lake?aws_secret_access_key=abc&region=eu",
                "s3://bucket/lake?aws_secret_access_key=***&region=eu",
            ),
            (
                "https://h/x?PASSWORD=z#frag",
                "https://h/x?PASSWORD=***#frag",
            ),
        ];
        for (url, shown) in cases {
            assert_eq!(redact(url), shown, "{url}");
        }
    }

    #[test]
    fn debug_and_display_never_show_the_secret() {
        #[derive(Debug)]
        #[allow(dead_code)] // read through Debug only
        struct Settings {
            url: SecretUrl,
            key: Secret,
        }
        let s = Settings {
            url: SecretUrl::new("postgres://ymera:hunter2@db/prod?password=hunter3"),
            key: Secret::new("AKIAsecret"),
        };
        let shown = format!("{s:?} {} {}", s.url, s.key);
        for leaked in ["hunter2", "hunter3", "AKIAsecret"] {
            assert!(!shown.contains(leaked), "{shown}");
        }
        assert!(shown.contains("postgres://ymera:***@db/prod"), "{shown}");
        assert_eq!(s.key.expose(), "AKIAsecret");
        assert_eq!(
            s.url.expose(),
            "postgres://ymera:hunter2@db/prod?password=hunter3"
        );
        let from_yaml: SecretUrl = serde_json::from_str(r#""postgres://a:b@h/d""#).unwrap();
        assert_eq!(from_yaml.expose(), "postgres://a:b@h/d");
    }
}
