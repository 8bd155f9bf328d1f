//! One run per output folder: [`OutLock`] holds an exclusive lock on `OUT/.collab.lock` for as
//! long as a run writes into `OUT`. The lock is the operating system's (`flock`), so a killed
//! run leaves no stale lock behind; a second run into the same folder is refused at once.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::CollabError;

/// File name of the lock inside an output folder.
pub const LOCK_FILE: &str = ".collab.lock";

/// An exclusive lock on an output folder, released when dropped (or when the process dies).
#[derive(Debug)]
pub struct OutLock {
    _file: File,
    path: PathBuf,
}

impl OutLock {
    /// Lock `dir` (created if missing). Fails, naming the folder and the process that holds it,
    /// when another run holds the lock.
    pub fn acquire(dir: &Path) -> Result<Self, CollabError> {
        let unwritable = |path: &Path, e: std::io::Error| {
            CollabError::checkpoint(
                path,
                format!("{e}; --out must be a folder this user can write"),
            )
        };
        std::fs::create_dir_all(dir).map_err(|e| unwritable(dir, e))?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| unwritable(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = holder.trim();
                return Err(CollabError::checkpoint(
                    dir,
                    format!(
                        "another collab run ({}) is writing into this folder; wait for it to \
                         finish or choose another --out",
                        if holder.is_empty() {
                            "pid unknown"
                        } else {
                            holder
                        }
                    ),
                ));
            }
            Err(TryLockError::Error(e)) => return Err(unwritable(&path, e)),
        }
        file.set_len(0).map_err(|e| unwritable(&path, e))?;
        let _ = write!(file, "pid {}", std::process::id());
        Ok(Self { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_folder_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = OutLock::acquire(dir.path()).unwrap();
        let err = OutLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(err.contains("another collab run"), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        OutLock::acquire(dir.path()).unwrap();
    }
}
