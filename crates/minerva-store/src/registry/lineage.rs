//! Where a model Minerva made came from: its source's name and digest, the operation
//! (`quantize q8_0`), and the quality report measured when it was made (JSON text).

use super::db::args;
use super::{Registry, RegistryError, UnixMillis};
use crate::ModelId;

/// One model's origin.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Lineage {
    pub source_id: String,
    pub source_sha256: String,
    pub operation: String,
    pub created_at: UnixMillis,
    /// The quality report, as JSON text.
    pub report: Option<String>,
}

impl Registry {
    /// Records (or replaces) where model `id` came from.
    pub fn set_lineage(&self, id: &ModelId, lineage: &Lineage) -> Result<(), RegistryError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO lineage (id, source_id, source_sha256, operation, created_at, report)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (id) DO UPDATE SET source_id = excluded.source_id,
                     source_sha256 = excluded.source_sha256, operation = excluded.operation,
                     created_at = excluded.created_at, report = excluded.report",
                args![
                    id.as_str(),
                    &lineage.source_id,
                    &lineage.source_sha256,
                    &lineage.operation,
                    lineage.created_at,
                    &lineage.report
                ],
            )
        })?;
        Ok(())
    }

    /// Where model `id` came from, when Minerva made it.
    pub fn lineage(&self, id: &ModelId) -> Result<Option<Lineage>, RegistryError> {
        self.read(|db| {
            db.query_opt(
                "SELECT source_id, source_sha256, operation, created_at, report FROM lineage WHERE id = ?1",
                args![id.as_str()],
            )?
            .map(|row| {
                Ok(Lineage {
                    source_id: row.get(0)?,
                    source_sha256: row.get(1)?,
                    operation: row.get(2)?,
                    created_at: row.get(3)?,
                    report: row.get(4)?,
                })
            })
            .transpose()
        })
    }
}
