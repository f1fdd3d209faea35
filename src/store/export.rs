//! `usaged export`: how it prints the stored usages.

/// What each usage is printed as (`usaged export --format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// One JSON object a line, as `GET /api/usages/{id}` answers it.
    Ndjson,
    /// A header line, then `id,patientId,timestamp,medication` a line.
    Csv,
}
