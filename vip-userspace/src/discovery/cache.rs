//! The last known backend set on disk, so that a vipd restarted while no
//! apiserver answers forwards to the apiservers it knew, not to the file's
//! seed list (the VIP must never depend on the apiserver it fronts).
//!
//! Written atomically: a temp file in the same folder, fsynced, renamed over
//! the old one (rename(2) replaces the name in one step), the folder
//! fsynced, so a crash leaves the old set or the new one, never half of one.

use std::{
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cached {
    /// The admitted backends, both families.
    pub backends: Vec<SocketAddr>,
    /// When they were last confirmed by the apiserver (unix seconds).
    pub synced_unix: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(
        "{path}: {source}; vipd keeps the backend set in memory and writes it again at the next change (check that the folder exists and is writable: discovery.cache)"
    )]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: not a backend cache ({why}); starting from the file's backends until the apiserver answers"
    )]
    Corrupt { path: PathBuf, why: String },
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The cache at `path`; `Ok(None)` if there is none yet.
pub fn read(path: &Path) -> Result<Option<Cached>, CacheError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CacheError::Read {
                path: path.into(),
                source,
            });
        }
    };
    let c: Cached = serde_json::from_slice(&text).map_err(|e| CacheError::Corrupt {
        path: path.into(),
        why: e.to_string(),
    })?;
    if c.backends.is_empty() {
        return Err(CacheError::Corrupt {
            path: path.into(),
            why: "it lists no backend".into(),
        });
    }
    Ok(Some(c))
}

/// Replaces the cache at `path` with `c`.
pub fn write(path: &Path, c: &Cached) -> Result<(), CacheError> {
    let err = |source| CacheError::Write {
        path: path.into(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        let mut text = serde_json::to_vec_pretty(c).map_err(std::io::Error::other)?;
        text.push(b'\n');
        f.write_all(&text)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_then_read_and_refusals() {
        let dir = std::env::temp_dir().join(format!("vipd-cache-test-{}", std::process::id()));
        let path = dir.join("sub/backends.json");
        assert!(read(&path).expect("absent is fine").is_none());
        let c = Cached {
            backends: vec![
                "10.0.0.11:6443".parse().expect("a"),
                "[fd00::11]:6443".parse().expect("b"),
            ],
            synced_unix: 1_800_000_000,
        };
        write(&path, &c).expect("write");
        assert_eq!(read(&path).expect("read"), Some(c.clone()));
        // No temp file left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["backends.json"]);
        std::fs::write(&path, "{\"backends\": [], \"synced_unix\": 1}").expect("write");
        assert!(matches!(read(&path), Err(CacheError::Corrupt { .. })));
        std::fs::write(&path, "garbage").expect("write");
        let e = read(&path).expect_err("corrupt");
        assert!(
            e.to_string().contains("starting from the file's backends"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
