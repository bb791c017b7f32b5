//! Rights by principal and name prefix: the role Windows security descriptors play for named
//! objects (docs/security.md, "Rights").
//!
//! An ACL file (`--acl-file`, TOML) lists rules:
//!
//! ```toml
//! [[rule]]
//! principal = "CN=alice"      # a client certificate subject (RFC 4514), or "*" for anyone
//! prefix = "jobs/"            # names starting with this ("" = every name; `Global\` ignored)
//! rights = ["create", "open", "synchronize", "modify-state"]   # or ["all"]
//! ```
//!
//! A principal's rights on a name are the union of the rights of every rule whose principal is
//! theirs (or `*`) and whose prefix starts the name. Without an ACL file every caller has every
//! right; with one, what no rule grants is denied. The node that receives a `Create` or `Open`
//! decides with its ACL and carries the decision in the log entry
//! ([`Request::Limited`](crate::namespace::Request::Limited)), so every replica applies the same
//! one; a denied create or open fails with `ERROR_ACCESS_DENIED` (5) and changes nothing, and a
//! handle never holds a right its opener lacks. Unnamed objects are private to their creator
//! and need no right.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::Error;
use crate::namespace::Allowed;

/// Rules an ACL file may hold at most.
pub const ACL_RULES_MAX: usize = 10_000;

/// Bytes a rule's principal or prefix may have at most.
const FIELD_BYTES_MAX: usize = 4096;

/// The principal of a rule that applies to every caller, with or without a principal.
pub const ANYONE: &str = "*";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AclFile {
    #[serde(default)]
    rule: Vec<RuleFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    principal: String,
    prefix: String,
    rights: Vec<String>,
}

/// One rule: `principal` may do `allowed` with names that start with `prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// A principal (certificate subject) or [`ANYONE`].
    pub principal: String,
    /// A name prefix, compared with the name without `Global\`.
    pub prefix: String,
    /// What it grants.
    pub allowed: Allowed,
}

impl Rule {
    /// The rule as the ACL file writes it, for `dlockctl acl` and logs.
    pub fn describe(&self) -> String {
        format!(
            "principal {:?} prefix {:?} rights [{}]",
            self.principal,
            self.prefix,
            rights_names(&self.allowed).join(", ")
        )
    }
}

/// The names of the rights in `allowed`, in the ACL file's words.
pub fn rights_names(allowed: &Allowed) -> Vec<&'static str> {
    let mut names = Vec::new();
    for (on, name) in [
        (allowed.create, "create"),
        (allowed.open, "open"),
        (allowed.synchronize, "synchronize"),
        (allowed.modify_state, "modify-state"),
    ] {
        if on {
            names.push(name);
        }
    }
    names
}

/// A node's access policy: no rules at all means every caller may do everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    rules: Option<Vec<Rule>>,
    path: Option<PathBuf>,
}

impl Acl {
    /// No policy: every caller has every right.
    pub fn open_to_all() -> Acl {
        Acl::default()
    }

    /// Reads an ACL file.
    ///
    /// # Errors
    ///
    /// `Error::Config` naming the file and what is wrong with it.
    pub fn load(path: &Path) -> Result<Acl, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read ACL file {}: {e}", path.display())))?;
        let mut acl = Acl::parse(&text, &path.display().to_string())?;
        acl.path = Some(path.to_owned());
        Ok(acl)
    }

    /// Parses the text of an ACL file (`origin` names it in errors).
    ///
    /// # Errors
    ///
    /// `Error::Config` for invalid TOML, unknown keys or rights, too many rules or a field
    /// too long.
    pub fn parse(text: &str, origin: &str) -> Result<Acl, Error> {
        let file: AclFile =
            toml::from_str(text).map_err(|e| Error::Config(format!("ACL file {origin}: {e}")))?;
        if file.rule.len() > ACL_RULES_MAX {
            return Err(Error::Config(format!(
                "ACL file {origin}: {} rules, at most {ACL_RULES_MAX}",
                file.rule.len()
            )));
        }
        let mut rules = Vec::with_capacity(file.rule.len());
        for (i, rule) in file.rule.into_iter().enumerate() {
            let at = format!("ACL file {origin}, rule {}", i + 1);
            if rule.principal.trim().is_empty() {
                return Err(Error::Config(format!(
                    "{at}: empty principal (use \"*\" for anyone)"
                )));
            }
            if rule.principal.len() > FIELD_BYTES_MAX || rule.prefix.len() > FIELD_BYTES_MAX {
                return Err(Error::Config(format!(
                    "{at}: principal or prefix longer than {FIELD_BYTES_MAX} bytes"
                )));
            }
            let mut allowed = Allowed::default();
            if rule.rights.is_empty() {
                return Err(Error::Config(format!("{at}: no rights")));
            }
            for right in &rule.rights {
                match right.as_str() {
                    "create" => allowed.create = true,
                    "open" => allowed.open = true,
                    "synchronize" => allowed.synchronize = true,
                    "modify-state" => allowed.modify_state = true,
                    "all" => allowed = Allowed::ALL,
                    other => {
                        return Err(Error::Config(format!(
                            "{at}: unknown right {other:?} (create, open, synchronize, \
                             modify-state, all)"
                        )));
                    }
                }
            }
            let prefix = rule
                .prefix
                .strip_prefix(dlock_proto::vocab::names::GLOBAL_PREFIX)
                .unwrap_or(&rule.prefix)
                .to_owned();
            if prefix.contains('\\') {
                return Err(Error::Config(format!(
                    "{at}: prefix {:?} can never match a name (`Local\\` names never reach the \
                     cluster, and names have no other backslash)",
                    rule.prefix
                )));
            }
            rules.push(Rule {
                principal: rule.principal.trim().to_owned(),
                prefix,
                allowed,
            });
        }
        Ok(Acl {
            rules: Some(rules),
            path: None,
        })
    }

    /// Whether a policy is in force.
    pub fn is_enforced(&self) -> bool {
        self.rules.is_some()
    }

    /// The file it was read from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// How many rules it has.
    pub fn len(&self) -> usize {
        self.rules.as_ref().map_or(0, Vec::len)
    }

    /// Whether it has no rules (an enforced empty policy denies everything).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What `principal` (`None`: a caller without one) may do with the object name `key`
    /// (without `Global\`), and the rules that grant it.
    pub fn check<'a>(&'a self, principal: Option<&str>, key: &str) -> (Allowed, Vec<&'a Rule>) {
        let Some(rules) = &self.rules else {
            return (Allowed::ALL, Vec::new());
        };
        let mut allowed = Allowed::default();
        let mut matched = Vec::new();
        for rule in rules {
            let theirs = rule.principal == ANYONE || Some(rule.principal.as_str()) == principal;
            if theirs && key.starts_with(&rule.prefix) {
                allowed.create |= rule.allowed.create;
                allowed.open |= rule.allowed.open;
                allowed.synchronize |= rule.allowed.synchronize;
                allowed.modify_state |= rule.allowed.modify_state;
                matched.push(rule);
            }
        }
        (allowed, matched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        [[rule]]
        principal = "CN=alice"
        prefix = "alice/"
        rights = ["all"]

        [[rule]]
        principal = "*"
        prefix = "Global\\shared/"
        rights = ["open", "synchronize"]

        [[rule]]
        principal = "CN=bob"
        prefix = "shared/"
        rights = ["modify-state"]
    "#;

    #[test]
    fn rights_are_the_union_of_matching_rules() {
        let acl = Acl::parse(EXAMPLE, "example").unwrap();
        assert!(acl.is_enforced());
        let (alice, rules) = acl.check(Some("CN=alice"), "alice/x");
        assert_eq!((alice, rules.len()), (Allowed::ALL, 1));
        assert_eq!(acl.check(Some("CN=alice"), "bob/x").0, Allowed::default());
        let (bob, rules) = acl.check(Some("CN=bob"), "shared/q");
        assert_eq!(rules.len(), 2);
        assert_eq!(
            bob,
            Allowed {
                create: false,
                open: true,
                synchronize: true,
                modify_state: true
            }
        );
        let (anonymous, _) = acl.check(None, "shared/q");
        assert!(anonymous.open && !anonymous.modify_state && !anonymous.create);
        // No policy: everything.
        assert_eq!(Acl::open_to_all().check(None, "x").0, Allowed::ALL);
        // An enforced empty policy: nothing.
        assert_eq!(
            Acl::parse("", "empty").unwrap().check(None, "x").0,
            Allowed::default()
        );
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        for (text, expected) in [
            (
                "[[rule]]\nprincipal = \"\"\nprefix = \"\"\nrights = [\"open\"]",
                "empty principal",
            ),
            (
                "[[rule]]\nprincipal = \"*\"\nprefix = \"\"\nrights = [\"fly\"]",
                "unknown right \"fly\"",
            ),
            (
                "[[rule]]\nprincipal = \"*\"\nprefix = \"\"\nrights = []",
                "no rights",
            ),
            (
                "[[rule]]\nprincipal = \"*\"\nprefix = \"\"\nrights = [\"open\"]\nextra = 1",
                "unknown field",
            ),
            ("rules = 1", "unknown field"),
            (
                "[[rule]]\nprincipal = \"*\"\nprefix = \"Local\\\\x\"\nrights = [\"open\"]",
                "never match",
            ),
        ] {
            let err = Acl::parse(text, "t").unwrap_err().to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn bearer_tokens_name_principals_and_unknown_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let token = "t".repeat(TOKEN_BYTES_MIN);
        std::fs::write(
            &path,
            format!("[[token]]\nprincipal = \"dev-alice\"\ntoken = \"{token}\"\n"),
        )
        .unwrap();
        let policy = Policy::with_tokens(Acl::open_to_all(), Tokens::load(&path).unwrap());
        let ask = |policy: &Policy, header: Option<&str>| {
            let mut metadata = tonic::metadata::MetadataMap::new();
            if let Some(header) = header {
                metadata.insert("authorization", header.parse().unwrap());
            }
            policy.principal_of(&tonic::Extensions::new(), &metadata)
        };
        assert_eq!(
            ask(&policy, Some(&format!("Bearer {token}"))).unwrap(),
            Some("dev-alice".into())
        );
        assert_eq!(ask(&policy, None).unwrap(), None);
        let wrong = format!("Bearer {}x", &token[1..]);
        assert_eq!(
            ask(&policy, Some(&wrong)).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        assert!(ask(&policy, Some("Basic abc")).is_err());
        // A node without a token file refuses tokens rather than ignoring them.
        let plain = Policy::new(Acl::open_to_all());
        assert!(ask(&plain, Some(&format!("Bearer {token}"))).is_err());
        // Short tokens and duplicates are refused when the file is read.
        std::fs::write(&path, "[[token]]\nprincipal = \"a\"\ntoken = \"short\"\n").unwrap();
        assert!(Tokens::load(&path).is_err());
        std::fs::write(
            &path,
            format!(
                "[[token]]\nprincipal = \"a\"\ntoken = \"{token}\"\n[[token]]\nprincipal = \"b\"\ntoken = \"{token}\"\n"
            ),
        )
        .unwrap();
        assert!(
            Tokens::load(&path)
                .unwrap_err()
                .to_string()
                .contains("same token twice")
        );
        // A parse error says where, never what the line holds.
        let secret = "s".repeat(40);
        std::fs::write(
            &path,
            format!("[[token]]\nprincipal = \"a\"\ntoken = \"{secret}\n"),
        )
        .unwrap();
        let err = Tokens::load(&path).unwrap_err().to_string();
        assert!(!err.contains(&secret) && err.contains("line"), "{err}");
        // A principal that could pass for a certificate subject is refused.
        std::fs::write(
            &path,
            format!("[[token]]\nprincipal = \"CN=admin\"\ntoken = \"{secret}\"\n"),
        )
        .unwrap();
        assert!(Tokens::load(&path).is_err());
    }
}

/// Shortest bearer token a token file may hold (a guessable token is a principal for anyone).
pub const TOKEN_BYTES_MIN: usize = 32;

/// Tokens a token file may hold at most.
pub const TOKENS_MAX: usize = 10_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    principal: String,
    token: String,
}

/// Development bearer tokens (`--token-file`): each stands for a principal, for callers without
/// a client certificate (docs/security.md, "Bearer tokens"). A TOML file of `[[token]]` tables
/// with `principal` and `token` (printable ASCII, at least [`TOKEN_BYTES_MIN`] bytes).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    entries: Option<Vec<(String, String)>>,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for Tokens {
    /// Never the tokens themselves.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("count", &self.entries.as_ref().map(Vec::len))
            .field("path", &self.path)
            .finish()
    }
}

impl Tokens {
    /// Reads a token file.
    ///
    /// # Errors
    ///
    /// `Error::Config` naming the file and what is wrong with it.
    pub fn load(path: &Path) -> Result<Tokens, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!("cannot read token file {}: {e}", path.display()))
        })?;
        let origin = path.display().to_string();
        // Not the parser's own rendering, which quotes the offending line (a token).
        let file: TokenFile = toml::from_str(&text).map_err(|e| {
            let line = e
                .span()
                .map(|span| text[..span.start.min(text.len())].lines().count().max(1));
            Error::Config(format!(
                "token file {origin}{}: {}",
                line.map(|l| format!(", line {l}")).unwrap_or_default(),
                e.message()
            ))
        })?;
        if file.token.len() > TOKENS_MAX {
            return Err(Error::Config(format!(
                "token file {origin}: {} tokens, at most {TOKENS_MAX}",
                file.token.len()
            )));
        }
        let mut entries: Vec<(String, String)> = Vec::with_capacity(file.token.len());
        for (i, entry) in file.token.into_iter().enumerate() {
            let at = format!("token file {origin}, token {}", i + 1);
            let principal = entry.principal.trim();
            if principal.is_empty()
                || principal.len() > crate::namespace::PRINCIPAL_MAX_BYTES
                || principal == ANYONE
                || principal.contains('=')
            {
                return Err(Error::Config(format!(
                    "{at}: the principal must be 1 to {} bytes, not \"*\", and without '=' \
                     (so that it can never pass for a certificate subject such as CN=admin)",
                    crate::namespace::PRINCIPAL_MAX_BYTES
                )));
            }
            if entry.token.len() < TOKEN_BYTES_MIN
                || !entry.token.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(Error::Config(format!(
                    "{at}: a token must be at least {TOKEN_BYTES_MIN} printable ASCII \
                     characters without spaces"
                )));
            }
            if entries.iter().any(|(_, t)| *t == entry.token) {
                return Err(Error::Config(format!("{at}: the same token twice")));
            }
            entries.push((entry.principal.trim().to_owned(), entry.token));
        }
        Ok(Tokens {
            entries: Some(entries),
            path: Some(path.to_owned()),
        })
    }

    /// Whether a token file is in force.
    pub fn is_enabled(&self) -> bool {
        self.entries.is_some()
    }

    /// The principal `token` stands for. Every entry of the same length is compared byte for
    /// byte without an early exit, so the time taken does not tell how much of a guess was
    /// right (only, at most, whether some token has its length).
    pub fn principal(&self, token: &str) -> Option<&str> {
        let mut found = None;
        for (principal, known) in self.entries.iter().flatten() {
            let same = known.len() == token.len()
                && known
                    .bytes()
                    .zip(token.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0;
            if same {
                found = Some(principal.as_str());
            }
        }
        found
    }
}

/// The policy in force on a node (ACL and bearer tokens), replaced on SIGHUP
/// ([`Policy::reload`]).
#[derive(Debug)]
pub struct Policy {
    current: std::sync::RwLock<std::sync::Arc<Acl>>,
    tokens: std::sync::RwLock<std::sync::Arc<Tokens>>,
}

impl Policy {
    /// A policy starting with `acl` and no bearer tokens.
    pub fn new(acl: Acl) -> std::sync::Arc<Policy> {
        Policy::with_tokens(acl, Tokens::default())
    }

    /// A policy starting with `acl` and `tokens`.
    pub fn with_tokens(acl: Acl, tokens: Tokens) -> std::sync::Arc<Policy> {
        std::sync::Arc::new(Policy {
            current: std::sync::RwLock::new(std::sync::Arc::new(acl)),
            tokens: std::sync::RwLock::new(std::sync::Arc::new(tokens)),
        })
    }

    /// The bearer tokens in force.
    pub fn tokens(&self) -> std::sync::Arc<Tokens> {
        self.tokens
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Reads the token file again; a file that does not parse leaves the tokens as they were.
    /// `Ok(None)` if the node has no token file.
    ///
    /// # Errors
    ///
    /// As [`Tokens::load`].
    pub fn reload_tokens(&self) -> Result<Option<usize>, Error> {
        let Some(path) = self.tokens().path.clone() else {
            return Ok(None);
        };
        let tokens = Tokens::load(&path)?;
        let count = tokens.entries.as_ref().map_or(0, Vec::len);
        *self
            .tokens
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = std::sync::Arc::new(tokens);
        Ok(Some(count))
    }

    /// The principal of a call: the subject of the client certificate its connection was
    /// verified with, else the principal of its bearer token (`authorization: Bearer TOKEN`),
    /// else none.
    ///
    /// # Errors
    ///
    /// `PERMISSION_DENIED` for a bearer token the node does not know (or a node without a
    /// token file), rather than treating the caller as anonymous.
    pub fn principal_of(
        &self,
        extensions: &tonic::Extensions,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Option<String>, tonic::Status> {
        if let Some(subject) = extensions
            .get::<dlock_tls::ConnInfo>()
            .and_then(|conn| conn.peer.as_ref())
            .map(|peer| peer.subject.clone())
        {
            return Ok(Some(subject));
        }
        let Some(value) = metadata.get("authorization") else {
            return Ok(None);
        };
        let token = value
            .to_str()
            .ok()
            .filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer "))
            .map(|v| &v[7..])
            .ok_or_else(|| {
                tonic::Status::permission_denied("the authorization header is not `Bearer TOKEN`")
            })?;
        let tokens = self.tokens();
        if !tokens.is_enabled() {
            return Err(tonic::Status::permission_denied(
                "this node takes no bearer tokens (it has no token-file); use a client \
                 certificate, or leave DLOCK_TOKEN unset",
            ));
        }
        match tokens.principal(token) {
            Some(principal) => Ok(Some(principal.to_owned())),
            None => Err(tonic::Status::permission_denied(
                "unknown bearer token (DLOCK_TOKEN): this node's token-file does not list it",
            )),
        }
    }

    /// The ACL in force.
    pub fn get(&self) -> std::sync::Arc<Acl> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Reads the ACL file again; a file that does not parse leaves the policy as it was.
    /// `Ok(None)` if the node has no ACL file.
    ///
    /// # Errors
    ///
    /// As [`Acl::load`].
    pub fn reload(&self) -> Result<Option<usize>, Error> {
        let Some(path) = self.get().path().map(Path::to_owned) else {
            return Ok(None);
        };
        let acl = Acl::load(&path)?;
        let rules = acl.len();
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = std::sync::Arc::new(acl);
        Ok(Some(rules))
    }
}
