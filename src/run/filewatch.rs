//! `--watch`: notices that the config file changed and has settled.
//! [`FileWatch`] is pure; [`file_stamp`] reads the file's metadata.

use std::path::Path;
use std::time::{Duration, SystemTime};

/// How often `--watch` looks at the config file.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// What identifies a version of a file: modification time and length.
pub type FileStamp = (SystemTime, u64);

/// Reads the stamp of `path` (`None` if it cannot be read).
pub fn file_stamp(path: &Path) -> Option<FileStamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Change detection for `--watch`, fed one stamp per poll. Pure.
///
/// A change is reported once the new stamp has been seen on two polls in a
/// row, so a file caught half-written by an editor is not reloaded.
///
/// Polling (one `stat` per second) rather than `notify`'s inotify on purpose:
/// a Kubernetes ConfigMap is updated by swapping a symlink in the directory
/// (no event on the watched file), and bind mounts from Docker Desktop hosts
/// deliver no inotify events; `stat` follows the symlink and sees both. With
/// `notify`'s `PollWatcher` it would be the same polling plus a thread.
#[derive(Debug, Clone)]
pub struct FileWatch {
    loaded: Option<FileStamp>,
    previous: Option<FileStamp>,
}

impl FileWatch {
    /// Starts from the stamp of the file as it was loaded.
    pub fn new(loaded: Option<FileStamp>) -> Self {
        FileWatch {
            loaded,
            previous: loaded,
        }
    }

    /// Feeds the current stamp; true when the file changed and has settled.
    pub fn poll(&mut self, now: Option<FileStamp>) -> bool {
        let settled = now.is_some() && now == self.previous;
        self.previous = now;
        if settled && now != self.loaded {
            self.loaded = now;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_watch_reports_a_settled_change_once() {
        let t = SystemTime::UNIX_EPOCH;
        let a = Some((t, 10));
        let b = Some((t + Duration::from_secs(1), 12));
        let c = Some((t + Duration::from_secs(2), 40));
        let mut w = FileWatch::new(a);
        assert!(!w.poll(a), "unchanged");
        assert!(!w.poll(b), "just changed: wait for it to settle");
        assert!(w.poll(b), "settled");
        assert!(!w.poll(b), "reported once");
        assert!(!w.poll(None), "unreadable (being replaced)");
        assert!(!w.poll(c));
        assert!(!w.poll(Some((t, 41))), "still changing");
        assert!(!w.poll(c));
        assert!(w.poll(c));
    }
}
