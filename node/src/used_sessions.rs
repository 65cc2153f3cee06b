//! The set of session ids a node has already accepted, kept on disk so that a
//! restart cannot be used to replay a session.
//!
//! The file is a sequence of fixed 40-byte records, a 32-byte session id
//! followed by its `expires_at` as 8 big-endian bytes. It grows by one
//! record per accepted session until [`FileUsedSessions::compact`] rewrites
//! it without the expired ones, which [`FileUsedSessions::insert`] does
//! itself whenever the file has doubled since the last compaction (and
//! holds at least [`COMPACT_AFTER`] records), and the node does at start-up.
//! An expired entry can go: its grant is refused as expired before the
//! replay check is reached. So the file and the map hold at most
//! `max(COMPACT_AFTER, 2 × live)` entries, where `live` is what was
//! accepted in one grant lifetime (`MAX_GRANT_LIFETIME_SECS` at most).
//!
//! A record is synced to disk before [`FileUsedSessions::insert`] accepts its
//! session. A crash in the middle of a write leaves a partial record at the
//! end; it is ignored (its session was never accepted) and overwritten.
//!
//! Times are whatever clock the caller uses for `now` and `expires_at`
//! (seconds since the Unix epoch in the node); nothing here reads a clock. A
//! session is live while `now < expires_at`.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Length of one record: session id and big-endian `expires_at`.
pub const RECORD_LEN: usize = 40;
/// Fewest records in the file before [`FileUsedSessions::insert`] compacts
/// it (160 KiB).
pub const COMPACT_AFTER: usize = 4096;

/// A replay set backed by an append-only file. One process owns the file.
#[derive(Debug)]
pub struct FileUsedSessions {
    path: PathBuf,
    /// The open file; records are written at `len` rather than appended, so a
    /// failed partial write is overwritten by the next one instead of shifting
    /// every later record.
    file: File,
    /// Length of the file's whole records.
    len: u64,
    /// Session id → `expires_at`.
    sessions: HashMap<[u8; 32], u64>,
    /// Records in the file at which the next insert compacts it.
    compact_at: usize,
}

impl FileUsedSessions {
    /// Opens (or creates, mode 0600) the file at `path` and loads its records.
    /// The folder must exist.
    pub fn open(path: impl Into<PathBuf>) -> io::Result<Self> {
        let path = path.into();
        // What an interrupted compaction left; the file itself is intact.
        match fs::remove_file(tmp_path(&path)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(&path)?;
        // The file may have just been created: make its name durable too.
        sync_parent(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let (records, partial) = bytes.as_chunks::<RECORD_LEN>();
        let mut sessions = HashMap::with_capacity(records.len());
        for record in records {
            let (session_id, expires_at) = decode(record);
            let latest = sessions.entry(session_id).or_insert(expires_at);
            *latest = (*latest).max(expires_at);
        }
        let len = (records.len() * RECORD_LEN) as u64;
        if !partial.is_empty() {
            tracing::warn!(path = %path.display(), bytes = partial.len(), "ignored a partial used-session record");
            file.set_len(len)?;
            file.sync_data()?;
        }
        let compact_at = next_compaction(sessions.len());
        Ok(Self { path, file, len, sessions, compact_at })
    }

    /// Records `session_id` as used until `expires_at`. Returns `true` once
    /// the record is on disk; `false`, writing nothing, if the session must be
    /// refused: it is already recorded and not expired, or `expires_at` is not
    /// after `now` (an entry that could not be remembered).
    pub fn insert(&mut self, session_id: [u8; 32], expires_at: u64, now: u64) -> io::Result<bool> {
        if expires_at <= now || self.contains(&session_id, now) {
            return Ok(false);
        }
        self.file.write_all_at(&encode(&session_id, expires_at), self.len)?;
        self.file.sync_data()?;
        self.len += RECORD_LEN as u64;
        self.sessions.insert(session_id, expires_at);
        if self.records() >= self.compact_at {
            // The session is on disk and accepted: a failed compaction
            // only leaves the file longer, tried again when it has doubled.
            if let Err(error) = self.compact(now) {
                tracing::warn!(path = %self.path.display(), %error, "could not compact the used-session file");
                self.compact_at = next_compaction(self.records());
            }
        }
        Ok(true)
    }

    /// Records in the file.
    pub fn records(&self) -> usize {
        (self.len / RECORD_LEN as u64) as usize
    }

    /// Whether `session_id` is recorded and not expired at `now`.
    pub fn contains(&self, session_id: &[u8; 32], now: u64) -> bool {
        self.sessions.get(session_id).is_some_and(|&expires_at| now < expires_at)
    }

    /// Number of entries held, expired ones included until [`Self::compact`].
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Drops the entries expired at `now`, rewriting the file atomically:
    /// a crash leaves the old file or the new one.
    pub fn compact(&mut self, now: u64) -> io::Result<()> {
        let live: HashMap<[u8; 32], u64> =
            self.sessions.iter().filter(|&(_, &e)| now < e).map(|(&s, &e)| (s, e)).collect();
        let mut contents = Vec::with_capacity(live.len() * RECORD_LEN);
        for (session_id, &expires_at) in &live {
            contents.extend_from_slice(&encode(session_id, expires_at));
        }
        let tmp = tmp_path(&self.path);
        let written = (|| {
            let mut file =
                OpenOptions::new().read(true).write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
            file.write_all(&contents)?;
            file.sync_all()?;
            fs::rename(&tmp, &self.path)?;
            Ok::<_, io::Error>(file)
        })();
        let file = match written {
            Ok(file) => file,
            Err(e) => {
                // Best effort: `open` removes it otherwise.
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        // From here the file at `path` is the new one, whatever happens next.
        self.file = file;
        self.len = contents.len() as u64;
        self.sessions = live;
        self.compact_at = next_compaction(self.sessions.len());
        sync_parent(&self.path)
    }
}

/// The file length, in records, at which a file holding `live` entries is
/// compacted next: when it has doubled.
fn next_compaction(live: usize) -> usize {
    COMPACT_AFTER.max(live.saturating_mul(2))
}

fn encode(session_id: &[u8; 32], expires_at: u64) -> [u8; RECORD_LEN] {
    let mut record = [0u8; RECORD_LEN];
    let (id, expiry) = record.split_at_mut(32);
    id.copy_from_slice(session_id);
    expiry.copy_from_slice(&expires_at.to_be_bytes());
    record
}

fn decode(record: &[u8; RECORD_LEN]) -> ([u8; 32], u64) {
    let session_id = std::array::from_fn(|i| record[i]);
    let expires_at = u64::from_be_bytes(std::array::from_fn(|i| record[32 + i]));
    (session_id, expires_at)
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    PathBuf::from(tmp)
}

/// Makes the creation or renaming of `path` durable.
fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn id(n: u8) -> [u8; 32] {
        [n; 32]
    }

    fn path() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("used-sessions");
        (tmp, path)
    }

    #[test]
    fn insert_once_then_refused() {
        let (_tmp, path) = path();
        let mut used = FileUsedSessions::open(&path).unwrap();
        assert!(used.is_empty());
        assert!(used.insert(id(1), 100, 10).unwrap());
        assert!(!used.insert(id(1), 100, 10).unwrap());
        assert!(!used.insert(id(1), 200, 99).unwrap());
        assert!(used.insert(id(2), 100, 10).unwrap());
        assert_eq!(used.len(), 2);
        assert_eq!(fs::metadata(&path).unwrap().len(), 2 * RECORD_LEN as u64);
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn already_expired_is_refused_and_not_written() {
        let (_tmp, path) = path();
        let mut used = FileUsedSessions::open(&path).unwrap();
        assert!(!used.insert(id(1), 10, 10).unwrap());
        assert!(!used.insert(id(1), 5, 10).unwrap());
        assert!(used.is_empty());
        assert_eq!(fs::metadata(&path).unwrap().len(), 0);
    }

    #[test]
    fn survives_reopen() {
        let (_tmp, path) = path();
        let mut used = FileUsedSessions::open(&path).unwrap();
        assert!(used.insert(id(1), 100, 10).unwrap());
        assert!(used.insert(id(2), 200, 10).unwrap());
        drop(used);
        let mut used = FileUsedSessions::open(&path).unwrap();
        assert_eq!(used.len(), 2);
        assert!(used.contains(&id(1), 50));
        assert!(!used.insert(id(1), 100, 50).unwrap());
        assert!(!used.insert(id(2), 300, 150).unwrap());
        assert!(used.insert(id(3), 100, 50).unwrap());
    }

    #[test]
    fn expired_entries_can_be_reinserted_and_compaction_drops_them() {
        let (_tmp, path) = path();
        let mut used = FileUsedSessions::open(&path).unwrap();
        assert!(used.insert(id(1), 100, 10).unwrap());
        assert!(used.insert(id(2), 1_000, 10).unwrap());
        // Expired at 100: accepted again, with a later expiry.
        assert!(!used.contains(&id(1), 100));
        assert!(used.insert(id(1), 300, 100).unwrap());
        assert!(!used.insert(id(1), 300, 200).unwrap());
        drop(used);

        // After a restart the later expiry of the duplicate wins.
        let mut used = FileUsedSessions::open(&path).unwrap();
        assert!(!used.insert(id(1), 400, 200).unwrap());
        assert_eq!(fs::metadata(&path).unwrap().len(), 3 * RECORD_LEN as u64);

        used.compact(500).unwrap();
        assert_eq!(used.len(), 1);
        assert_eq!(fs::metadata(&path).unwrap().len(), RECORD_LEN as u64);
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!path.with_file_name("used-sessions.tmp").exists());
        // Still refused after compaction, and writes go to the new file.
        assert!(!used.insert(id(2), 2_000, 500).unwrap());
        assert!(used.insert(id(3), 2_000, 500).unwrap());
        drop(used);

        let mut used = FileUsedSessions::open(&path).unwrap();
        assert_eq!(used.len(), 2);
        assert!(used.contains(&id(2), 500));
        assert!(used.contains(&id(3), 500));
        assert!(used.insert(id(1), 2_000, 500).unwrap());
    }

    /// 100 000 grants at 80 a second, each valid for two minutes (as the
    /// operator issues them): the file and the map never hold more than
    /// twice what is live, or `COMPACT_AFTER`, and what is live is still
    /// refused.
    #[test]
    fn stays_bounded_across_100_000_grants() {
        let (_tmp, path) = path();
        let mut used = FileUsedSessions::open(&path).unwrap();
        let (rate, ttl) = (80u64, 120u64);
        let live_at_most = usize::try_from(rate * (ttl + 1)).unwrap();
        let bound = COMPACT_AFTER.max(2 * live_at_most);
        let (mut most_records, mut most_entries) = (0, 0);
        let id = |n: u64| -> [u8; 32] {
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&n.to_be_bytes());
            id
        };
        for n in 0..100_000u64 {
            let now = 1_000 + n / rate;
            assert!(used.insert(id(n), now + ttl, now).unwrap());
            most_records = most_records.max(used.records());
            most_entries = most_entries.max(used.len());
            assert_eq!(fs::metadata(&path).unwrap().len(), (used.records() * RECORD_LEN) as u64);
        }
        assert!(most_records <= bound, "file held {most_records} records; bound {bound}");
        assert!(most_entries <= bound, "map held {most_entries} entries; bound {bound}");
        assert!(most_records > live_at_most, "it did grow past one lifetime before compacting");
        // The last grants are still refused, after a restart too.
        let now = 1_000 + 99_999 / rate;
        assert!(!used.insert(id(99_999), now + ttl, now).unwrap());
        drop(used);
        let mut used = FileUsedSessions::open(&path).unwrap();
        assert!(!used.insert(id(99_000), now + ttl, now).unwrap());
        used.compact(now).unwrap();
        assert!(used.len() <= live_at_most);
    }

    #[test]
    fn trailing_partial_record_is_ignored() {
        let (_tmp, path) = path();
        let mut used = FileUsedSessions::open(&path).unwrap();
        assert!(used.insert(id(1), 100, 10).unwrap());
        assert!(used.insert(id(2), 100, 10).unwrap());
        drop(used);
        // A crash in the middle of writing a third record.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&encode(&id(3), 100)[..17]).unwrap();
        drop(file);

        let mut used = FileUsedSessions::open(&path).unwrap();
        assert_eq!(used.len(), 2);
        assert!(!used.contains(&id(3), 10));
        assert_eq!(fs::metadata(&path).unwrap().len(), 2 * RECORD_LEN as u64);
        assert!(used.insert(id(4), 100, 10).unwrap());
        drop(used);

        let used = FileUsedSessions::open(&path).unwrap();
        assert_eq!(used.len(), 3);
        assert!(used.contains(&id(4), 10));
        assert!(!used.contains(&id(3), 10));
    }

    #[test]
    fn leftover_compaction_file_is_removed_on_open() {
        let (_tmp, path) = path();
        let mut used = FileUsedSessions::open(&path).unwrap();
        assert!(used.insert(id(1), 100, 10).unwrap());
        drop(used);
        let tmp = path.with_file_name("used-sessions.tmp");
        fs::write(&tmp, [0u8; 25]).unwrap();
        let used = FileUsedSessions::open(&path).unwrap();
        assert!(!tmp.exists());
        assert!(used.contains(&id(1), 10));
    }
}
