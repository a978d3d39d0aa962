//! The repository's example pipelines, training specs and warehouse migrations, built into
//! the binary so `ymera demo` runs in any directory and `ymera demo --write-examples DIR`
//! can hand them to a new project. The build script's source hash covers them
//! (`build/source_hash.rs`, `ROOT_DIRS`).

use std::path::{Path, PathBuf};

/// (path relative to a project root, contents).
pub const FILES: &[(&str, &str)] = &[
    (
        "pipelines/metric_anomalies.yaml",
        include_str!("../../../pipelines/metric_anomalies.yaml"),
    ),
    (
        "pipelines/metric_events.yaml",
        include_str!("../../../pipelines/metric_events.yaml"),
    ),
    (
        "pipelines/project_events.yaml",
        include_str!("../../../pipelines/project_events.yaml"),
    ),
    (
        "pipelines/task_events.yaml",
        include_str!("../../../pipelines/task_events.yaml"),
    ),
    (
        "pipelines/user_events.yaml",
        include_str!("../../../pipelines/user_events.yaml"),
    ),
    (
        "models/effort.yaml",
        include_str!("../../../models/effort.yaml"),
    ),
    (
        "models/risk.yaml",
        include_str!("../../../models/risk.yaml"),
    ),
    (
        "models/segments.yaml",
        include_str!("../../../models/segments.yaml"),
    ),
    (
        "sql/migrations/0001_projects_and_tasks.sql",
        include_str!("../../../sql/migrations/0001_projects_and_tasks.sql"),
    ),
];

/// Writes every example under `dir`, refusing before writing anything if one of the files
/// exists already. Returns the paths written.
pub fn write(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let targets: Vec<(PathBuf, &str)> = FILES.iter().map(|(p, c)| (dir.join(p), *c)).collect();
    if let Some((p, _)) = targets.iter().find(|(p, _)| p.exists()) {
        return Err(format!(
            "{} exists: write the examples into an empty directory (nothing was written)",
            p.display()
        ));
    }
    for (path, contents) in &targets {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::write(path, contents)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(targets.into_iter().map(|(p, _)| p).collect())
}
