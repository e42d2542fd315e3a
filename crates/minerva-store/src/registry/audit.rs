//! The audit log: who did what to the models, and when. Every administrative action
//! (a load or unload through the API, an import, a pull, a removal, a tag or rollback, a
//! settings change, a configuration reload, an experiment's promotion) adds one row: the
//! time, the action, its target, the actor (the API key's fingerprint, never the key, or
//! the command-line user) and the outcome. It holds no prompt and no output. Rows older
//! than [`AUDIT_RETENTION`] are pruned as new ones arrive.

use std::time::Duration;

use super::db::args;
use super::{Registry, RegistryError, UnixMillis, now_millis};

/// How long audit rows are kept.
pub const AUDIT_RETENTION: Duration = Duration::from_secs(365 * 24 * 3600);

/// One administrative action.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    /// When (milliseconds since the epoch).
    pub at: UnixMillis,
    /// What: `load`, `unload`, `import`, `pull`, `remove`, `tag`, `rollback`, `config`,
    /// `reload`, `experiment`, … (an HTTP action names its method and route).
    pub action: String,
    /// On what: a model id, an experiment, a path (empty when none).
    pub target: String,
    /// Who: `key:` and the first hex digits of the API key's SHA-256, `local` (a server
    /// without keys), or `cli:` and the user name.
    pub actor: String,
    /// `ok`, or the error (an HTTP action: its status).
    pub outcome: String,
}

impl AuditEntry {
    /// An entry for now.
    pub fn now(
        action: impl Into<String>,
        target: impl Into<String>,
        actor: impl Into<String>,
        outcome: impl Into<String>,
    ) -> Self {
        Self {
            at: now_millis(),
            action: action.into(),
            target: target.into(),
            actor: actor.into(),
            outcome: outcome.into(),
        }
    }
}

impl Registry {
    /// Adds `entry` to the audit log.
    pub fn audit(&self, entry: &AuditEntry) -> Result<(), RegistryError> {
        let oldest = entry.at.saturating_sub(AUDIT_RETENTION.as_millis() as i64);
        self.write(|tx| {
            tx.execute(
                "INSERT INTO audit (at, action, target, actor, outcome) VALUES (?1, ?2, ?3, ?4, ?5)",
                args![entry.at, &entry.action, &entry.target, &entry.actor, &entry.outcome],
            )?;
            tx.execute("DELETE FROM audit WHERE at < ?1", args![oldest])?;
            Ok(())
        })
    }

    /// The audit log from `since` on, oldest first.
    pub fn audit_since(&self, since: UnixMillis) -> Result<Vec<AuditEntry>, RegistryError> {
        self.read(|db| {
            db.query(
                "SELECT at, action, target, actor, outcome FROM audit WHERE at >= ?1 ORDER BY seq",
                args![since],
            )?
            .iter()
            .map(|row| {
                Ok(AuditEntry {
                    at: row.get(0)?,
                    action: row.get(1)?,
                    target: row.get(2)?,
                    actor: row.get(3)?,
                    outcome: row.get(4)?,
                })
            })
            .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_keeps_actions_in_order_and_prunes_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(&dir.path().join("registry.sqlite")).unwrap();
        let mut old = AuditEntry::now("import", "a", "cli:ann", "ok");
        old.at -= AUDIT_RETENTION.as_millis() as i64 + 1000;
        registry.audit(&old).unwrap();
        assert_eq!(registry.audit_since(0).unwrap(), vec![old.clone()]);
        let load = AuditEntry::now("load", "b", "key:0a1b2c3d", "ok");
        let unload = AuditEntry::now("unload", "b", "local", "503");
        registry.audit(&load).unwrap();
        registry.audit(&unload).unwrap();
        // The year-old row went as the new ones arrived.
        assert_eq!(registry.audit_since(0).unwrap(), vec![load.clone(), unload.clone()]);
        assert_eq!(registry.audit_since(unload.at + 1).unwrap(), vec![]);
        // Kept across a reopen.
        drop(registry);
        let registry = Registry::open(&dir.path().join("registry.sqlite")).unwrap();
        assert_eq!(registry.audit_since(load.at).unwrap().len(), 2);
    }
}
