//! Key shares on the node's volume, encrypted at rest.
//!
//! A [`ShareStore`] is a folder of files `<name>.share`, one per share, each
//! sealed with XChaCha20-Poly1305 under the node's [`StoreKey`]:
//!
//! ```text
//! b"TORCUSS1" ‖ nonce (24 random bytes) ‖ ciphertext ‖ tag (16 bytes)
//! ```
//!
//! The associated data is the magic followed by the share's name, so a file
//! copied or renamed to another name does not decrypt. Writes go to a
//! temporary file in the same folder that is synced and then renamed over the
//! share, and the folder is synced after: a crash leaves the old share or the
//! new one, never a mix. One process owns a store folder; [`ShareStore::open`]
//! deletes the temporary files an interrupted write left behind.
//!
//! Neither plaintext nor key bytes ever reach an error or a log line.

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use chacha20poly1305::{AeadInOut, Key, KeyInit, Tag, XChaCha20Poly1305, XNonce};
use zeroize::{Zeroize, Zeroizing};

/// First bytes of every share file; also the start of the associated data.
pub const MAGIC: &[u8; 8] = b"TORCUSS1";
/// Extension of share files.
pub const EXTENSION: &str = "share";
/// Longest share name.
pub const MAX_NAME_LEN: usize = 128;

const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = MAGIC.len() + NONCE_LEN;
/// A key file is 64 hex characters and some whitespace; anything this long is
/// not a key file.
const MAX_KEY_FILE_LEN: usize = 256;
/// How much of a refused name an error repeats.
const NAME_IN_ERROR_LEN: usize = 64;

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A store key is not 64 hexadecimal characters.
    #[error("invalid store key: {reason}")]
    InvalidKey {
        /// What is wrong with it (never the key itself).
        reason: String,
    },
    /// The store key file could not be read.
    #[error("cannot read store key file {path}: {source}")]
    ReadKeyFile {
        /// The key file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The store key file does not hold a store key.
    #[error("invalid store key file {path}: {reason}")]
    InvalidKeyFile {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it (never the key itself).
        reason: String,
    },
    /// A share name is not 1 to 128 characters of `[a-z0-9._-]` starting with
    /// something else than a dot.
    #[error("invalid share name {name:?}: {reason}")]
    InvalidName {
        /// The name (its start, if it is long).
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The operating system's random source failed.
    #[error("cannot draw random bytes: {0}")]
    Random(getrandom::Error),
    /// A file system operation failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// A share file is shorter than a header and a tag.
    #[error("share {name:?} is truncated: {len} bytes, a share file has at least {} bytes", HEADER_LEN + TAG_LEN)]
    Truncated {
        /// The share.
        name: String,
        /// Length of its file.
        len: usize,
    },
    /// A share file does not start with [`MAGIC`].
    #[error("share {name:?} is not a torcus share file (bad magic)")]
    BadMagic {
        /// The share.
        name: String,
    },
    /// A share file does not decrypt: wrong key, tampered with, truncated
    /// inside the ciphertext, or copied from another name.
    #[error("share {name:?} does not decrypt: wrong store key, or the file was altered or renamed")]
    Decrypt {
        /// The share.
        name: String,
    },
    /// A share could not be encrypted (it is too large for the cipher).
    #[error("share {name:?} cannot be encrypted")]
    Encrypt {
        /// The share.
        name: String,
    },
}

/// Result of store operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The 32-byte key that seals every share of a node. Zeroized on drop; its
/// `Debug` does not show it.
pub struct StoreKey(Zeroizing<[u8; 32]>);

impl StoreKey {
    /// Parses 64 hexadecimal characters (either case, nothing else).
    pub fn from_hex(hex: &str) -> Result<Self> {
        parse_hex(hex.as_bytes()).map(Self).map_err(|reason| Error::InvalidKey { reason })
    }

    /// Reads a key file: 64 hexadecimal characters, with surrounding
    /// whitespace (a trailing newline) allowed.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let read_error = |source| Error::ReadKeyFile { path: path.to_owned(), source };
        let invalid = |reason: String| Error::InvalidKeyFile { path: path.to_owned(), reason };
        let mut file = File::open(path).map_err(read_error)?;
        // A fixed buffer, so that no reallocation leaves a copy of the key behind.
        let mut buf = Zeroizing::new([0u8; MAX_KEY_FILE_LEN]);
        let mut len = 0;
        while len < buf.len() {
            match file.read(&mut buf[len..]) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(read_error(e)),
            }
        }
        if len == buf.len() {
            return Err(invalid(format!("longer than {MAX_KEY_FILE_LEN} bytes; expected 64 hexadecimal characters")));
        }
        let text = std::str::from_utf8(&buf[..len]).map_err(|_| invalid("not text".to_owned()))?;
        parse_hex(text.trim().as_bytes()).map(Self).map_err(invalid)
    }

    /// A fresh random key (for tests and for provisioning).
    pub fn generate() -> Result<Self> {
        let mut key = Zeroizing::new([0u8; 32]);
        getrandom::fill(key.as_mut_slice()).map_err(Error::Random)?;
        Ok(Self(key))
    }

    /// The key's public check value ([`torcus_contract::store_key_check`]),
    /// which the cluster configuration names for this node.
    pub fn check(&self) -> String {
        torcus_contract::store_key_check(&self.0)
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        // The cipher keeps its own copy of the key and zeroizes it on drop.
        XChaCha20Poly1305::new(<&Key>::from(&*self.0))
    }
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoreKey(<redacted>)")
    }
}

/// A folder of encrypted key shares.
#[derive(Debug)]
pub struct ShareStore {
    dir: PathBuf,
    key: StoreKey,
}

impl ShareStore {
    /// Opens the store in `dir`, creating the folder (mode 0700) if it is
    /// missing, and deletes the `*.tmp` files an interrupted write left.
    pub fn open(dir: impl Into<PathBuf>, key: StoreKey) -> Result<Self> {
        let dir = dir.into();
        DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(io_error("create", &dir))?;
        let mut removed = false;
        for entry in fs::read_dir(&dir).map_err(io_error("list", &dir))? {
            let entry = entry.map_err(io_error("list", &dir))?;
            let is_tmp = entry.file_name().to_str().is_some_and(|name| name.ends_with(".tmp"));
            let is_dir = entry.file_type().map_err(io_error("inspect", &entry.path()))?.is_dir();
            if is_tmp && !is_dir {
                let path = entry.path();
                fs::remove_file(&path).map_err(io_error("remove", &path))?;
                tracing::warn!(path = %path.display(), "removed the leftover of an interrupted share write");
                removed = true;
            }
        }
        if removed {
            sync_dir(&dir)?;
        }
        Ok(Self { dir, key })
    }

    /// The store's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stores `plaintext` as share `name`, replacing any share of that name
    /// atomically. Returns once the new share is durable.
    pub fn put(&self, name: &str, plaintext: &[u8]) -> Result<()> {
        check_name(name)?;
        let sealed = self.seal(name, plaintext)?;
        let target = self.path(name);
        let mut suffix = [0u8; 8];
        getrandom::fill(&mut suffix).map_err(Error::Random)?;
        let tmp = self.dir.join(format!("{name}.{EXTENSION}.{:016x}.tmp", u64::from_le_bytes(suffix)));
        let written =
            write_new(&tmp, &sealed).and_then(|()| fs::rename(&tmp, &target).map_err(io_error("rename", &tmp)));
        if written.is_err() {
            // Best effort: `open` removes it otherwise.
            let _ = fs::remove_file(&tmp);
        }
        written?;
        sync_dir(&self.dir)
    }

    /// Share `name`, or `None` if there is none.
    pub fn get(&self, name: &str) -> Result<Option<Zeroizing<Vec<u8>>>> {
        check_name(name)?;
        let path = self.path(name);
        let sealed = match fs::read(&path) {
            Ok(sealed) => sealed,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("read", &path)(e)),
        };
        self.unseal(name, &sealed).map(Some)
    }

    /// Whether share `name` exists (without decrypting it).
    pub fn contains(&self, name: &str) -> Result<bool> {
        check_name(name)?;
        let path = self.path(name);
        path.try_exists().map_err(io_error("inspect", &path))
    }

    /// Names of all shares, sorted. Files that are not shares are skipped.
    pub fn list(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_error("list", &self.dir))? {
            let entry = entry.map_err(io_error("list", &self.dir))?;
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str().and_then(|f| f.strip_suffix(EXTENSION)?.strip_suffix('.')) else {
                continue;
            };
            if check_name(name).is_ok() {
                names.push(name.to_owned());
            }
        }
        names.sort_unstable();
        Ok(names)
    }

    /// Deletes share `name`; returns whether there was one.
    pub fn remove(&self, name: &str) -> Result<bool> {
        check_name(name)?;
        let path = self.path(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_error("remove", &path)(e)),
        }
        sync_dir(&self.dir)?;
        Ok(true)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.{EXTENSION}"))
    }

    /// The contents of a share file holding `plaintext`.
    fn seal(&self, name: &str, plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(Error::Random)?;
        // Room for the tag up front: the buffer never reallocates, so no stray
        // copy of the plaintext is left on the heap.
        let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let sealed = self.key.cipher().encrypt_inout_detached(
            &XNonce::from(nonce),
            &associated_data(name),
            (&mut out[HEADER_LEN..]).into(),
        );
        match sealed {
            Ok(tag) => {
                out.extend_from_slice(&tag);
                Ok(out)
            }
            Err(_) => {
                out.zeroize();
                Err(Error::Encrypt { name: name.to_owned() })
            }
        }
    }

    /// The plaintext of share file contents `sealed`.
    fn unseal(&self, name: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let truncated = || Error::Truncated { name: name.to_owned(), len: sealed.len() };
        let (magic, rest) = sealed.split_first_chunk::<{ MAGIC.len() }>().ok_or_else(truncated)?;
        if magic != MAGIC {
            return Err(Error::BadMagic { name: name.to_owned() });
        }
        let (nonce, rest) = rest.split_first_chunk::<NONCE_LEN>().ok_or_else(truncated)?;
        let (ciphertext, tag) = rest.split_last_chunk::<TAG_LEN>().ok_or_else(truncated)?;
        // Decrypted in place in a buffer that is zeroized however this ends.
        let mut plaintext = Zeroizing::new(ciphertext.to_vec());
        self.key
            .cipher()
            .decrypt_inout_detached(
                &XNonce::from(*nonce),
                &associated_data(name),
                plaintext.as_mut_slice().into(),
                &Tag::from(*tag),
            )
            .map_err(|_| Error::Decrypt { name: name.to_owned() })?;
        Ok(plaintext)
    }
}

/// What each share's ciphertext is bound to: the format and the share's name.
fn associated_data(name: &str) -> Vec<u8> {
    [MAGIC.as_slice(), name.as_bytes()].concat()
}

/// Refuses names that are not `[a-z0-9._-]{1,128}` or that start with a dot,
/// so no name can leave the folder or collide with a temporary file.
fn check_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > MAX_NAME_LEN {
        "longer than 128 characters"
    } else if name.starts_with('.') {
        "starts with a dot"
    } else if !name.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-')) {
        "only a-z, 0-9, '.', '_' and '-' are allowed"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName { name: name.chars().take(NAME_IN_ERROR_LEN).collect(), reason })
}

/// Decodes 64 hexadecimal characters; the error never repeats the input.
fn parse_hex(hex: &[u8]) -> Result<Zeroizing<[u8; 32]>, String> {
    if hex.len() != 64 {
        return Err(format!("expected 64 hexadecimal characters, found {}", hex.len()));
    }
    let mut key = Zeroizing::new([0u8; 32]);
    for (byte, pair) in key.iter_mut().zip(hex.chunks_exact(2)) {
        let (Some(high), Some(low)) = (nibble(pair[0]), nibble(pair[1])) else {
            return Err("not hexadecimal".to_owned());
        };
        *byte = high << 4 | low;
    }
    Ok(key)
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Writes a new file (mode 0600) and syncs it.
fn write_new(path: &Path, contents: &[u8]) -> Result<()> {
    let mut file =
        OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io_error("create", path))?;
    file.write_all(contents).map_err(io_error("write", path))?;
    file.sync_all().map_err(io_error("sync", path))
}

/// Makes renames and removals in `dir` durable.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error("sync", dir))
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io { op, path, source }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const SECRET: &[u8] = b"the-secret-share-bytes-0123456789";

    fn store() -> (tempfile::TempDir, ShareStore) {
        let tmp = tempfile::tempdir().unwrap();
        let store = ShareStore::open(tmp.path().join("shares"), StoreKey::from_hex(KEY_HEX).unwrap()).unwrap();
        (tmp, store)
    }

    fn file_of(store: &ShareStore, name: &str) -> PathBuf {
        store.dir().join(format!("{name}.share"))
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn round_trip() {
        let (_tmp, store) = store();
        assert_eq!(store.get("key-1").unwrap(), None);
        assert!(!store.contains("key-1").unwrap());
        store.put("key-1", SECRET).unwrap();
        store.put("key-2", b"").unwrap();
        assert_eq!(store.get("key-1").unwrap().unwrap().as_slice(), SECRET);
        assert_eq!(store.get("key-2").unwrap().unwrap().as_slice(), b"");
        assert!(store.contains("key-1").unwrap());
        assert_eq!(store.list().unwrap(), ["key-1", "key-2"]);
        assert!(store.remove("key-1").unwrap());
        assert!(!store.remove("key-1").unwrap());
        assert_eq!(store.get("key-1").unwrap(), None);
        assert_eq!(store.list().unwrap(), ["key-2"]);
    }

    #[test]
    fn reopened_with_the_same_key_reads_the_share() {
        let (tmp, store) = store();
        store.put("k", SECRET).unwrap();
        drop(store);
        let store = ShareStore::open(tmp.path().join("shares"), StoreKey::from_hex(KEY_HEX).unwrap()).unwrap();
        assert_eq!(store.get("k").unwrap().unwrap().as_slice(), SECRET);
    }

    #[test]
    fn file_does_not_contain_the_plaintext() {
        let (_tmp, store) = store();
        store.put("k", SECRET).unwrap();
        let on_disk = fs::read(file_of(&store, "k")).unwrap();
        assert!(on_disk.starts_with(MAGIC));
        assert_eq!(on_disk.len(), MAGIC.len() + 24 + SECRET.len() + 16);
        // Not even 8 consecutive bytes of the plaintext appear.
        for window in SECRET.windows(8) {
            assert!(!on_disk.windows(8).any(|w| w == window));
        }
        // Two writes of the same plaintext use different nonces.
        store.put("k2", SECRET).unwrap();
        assert_ne!(on_disk, fs::read(file_of(&store, "k2")).unwrap());
    }

    #[test]
    fn wrong_key_fails_with_decrypt() {
        let (tmp, store) = store();
        store.put("k", SECRET).unwrap();
        let other = ShareStore::open(tmp.path().join("shares"), StoreKey::generate().unwrap()).unwrap();
        assert!(matches!(other.get("k"), Err(Error::Decrypt { name }) if name == "k"));
    }

    #[test]
    fn any_flipped_byte_fails() {
        let (_tmp, store) = store();
        store.put("k", SECRET).unwrap();
        let path = file_of(&store, "k");
        let good = fs::read(&path).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            fs::write(&path, &bad).unwrap();
            let result = store.get("k");
            if i < MAGIC.len() {
                assert!(matches!(result, Err(Error::BadMagic { .. })), "byte {i}: {result:?}");
            } else {
                assert!(matches!(result, Err(Error::Decrypt { .. })), "byte {i}: {result:?}");
            }
        }
    }

    #[test]
    fn file_copied_to_another_name_fails() {
        let (_tmp, store) = store();
        store.put("alice", SECRET).unwrap();
        fs::copy(file_of(&store, "alice"), file_of(&store, "bob")).unwrap();
        assert!(matches!(store.get("bob"), Err(Error::Decrypt { name }) if name == "bob"));
        assert_eq!(store.get("alice").unwrap().unwrap().as_slice(), SECRET);
    }

    #[test]
    fn truncated_file_fails_cleanly() {
        let (_tmp, store) = store();
        store.put("k", SECRET).unwrap();
        let path = file_of(&store, "k");
        let good = fs::read(&path).unwrap();
        for len in 0..good.len() {
            fs::write(&path, &good[..len]).unwrap();
            let result = store.get("k");
            if len < HEADER_LEN + TAG_LEN {
                assert!(matches!(result, Err(Error::Truncated { len: l, .. }) if l == len), "{len}: {result:?}");
            } else {
                assert!(matches!(result, Err(Error::Decrypt { .. })), "{len}: {result:?}");
            }
        }
        fs::write(&path, b"").unwrap();
        let message = store.get("k").unwrap_err().to_string();
        assert!(message.contains("truncated"), "{message}");
    }

    #[test]
    fn bad_names_are_refused() {
        let (_tmp, store) = store();
        let long = "a".repeat(200);
        for name in ["../x", "a/b", ".hidden", "", long.as_str(), "..", "/etc/passwd", "A", "a b", "a\0b", "é"] {
            assert!(matches!(store.put(name, SECRET), Err(Error::InvalidName { .. })), "put {name:?}");
            assert!(matches!(store.get(name), Err(Error::InvalidName { .. })), "get {name:?}");
            assert!(matches!(store.contains(name), Err(Error::InvalidName { .. })), "contains {name:?}");
            assert!(matches!(store.remove(name), Err(Error::InvalidName { .. })), "remove {name:?}");
        }
        assert!(store.list().unwrap().is_empty());
        assert!(!store.dir().parent().unwrap().join("x.share").exists());
        // The error repeats only the start of a long name.
        let message = store.put(&long, SECRET).unwrap_err().to_string();
        assert!(message.len() < 150, "{message}");
        // The longest allowed name and every allowed character work.
        let longest = "a".repeat(MAX_NAME_LEN);
        store.put(&longest, SECRET).unwrap();
        store.put("key_0.9-z", SECRET).unwrap();
        assert_eq!(store.list().unwrap(), [longest.as_str(), "key_0.9-z"]);
    }

    #[test]
    fn interrupted_write_leaves_the_old_share_and_open_cleans_up() {
        let (tmp, store) = store();
        store.put("k", SECRET).unwrap();
        let dir = store.dir().to_owned();
        drop(store);
        // What a crash in the middle of a second `put` leaves behind.
        let leftover = dir.join("k.share.0123456789abcdef.tmp");
        fs::write(&leftover, b"TORCUSS1 half a new sha").unwrap();
        let unrelated = dir.join("notes.txt");
        fs::write(&unrelated, b"keep me").unwrap();

        let store = ShareStore::open(tmp.path().join("shares"), StoreKey::from_hex(KEY_HEX).unwrap()).unwrap();
        assert!(!leftover.exists());
        assert!(unrelated.exists());
        assert_eq!(store.get("k").unwrap().unwrap().as_slice(), SECRET);
        assert_eq!(store.list().unwrap(), ["k"]);
    }

    #[test]
    fn put_overwrites_atomically() {
        let (_tmp, store) = store();
        store.put("k", b"old share").unwrap();
        store.put("k", b"new share, longer").unwrap();
        assert_eq!(store.get("k").unwrap().unwrap().as_slice(), b"new share, longer");
        // Only the share itself is left: no temporary file.
        let files: Vec<_> = fs::read_dir(store.dir()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(files, ["k.share"]);
        store.put("k", b"short").unwrap();
        assert_eq!(store.get("k").unwrap().unwrap().as_slice(), b"short");
    }

    #[test]
    fn permissions_are_owner_only() {
        let (_tmp, store) = store();
        store.put("k", SECRET).unwrap();
        assert_eq!(mode(store.dir()), 0o700);
        assert_eq!(mode(&file_of(&store, "k")), 0o600);
        store.put("k", b"again").unwrap();
        assert_eq!(mode(&file_of(&store, "k")), 0o600);
    }

    #[test]
    fn store_key_debug_is_redacted() {
        let key = StoreKey::from_hex(KEY_HEX).unwrap();
        assert_eq!(format!("{key:?}"), "StoreKey(<redacted>)");
        let (_tmp, store) = store();
        let shown = format!("{store:?}");
        assert!(shown.contains("StoreKey(<redacted>)"), "{shown}");
        assert!(!shown.contains("0102"), "{shown}");
    }

    #[test]
    fn store_key_from_hex_and_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("store.key");
        let upper = KEY_HEX.to_uppercase();
        for good in [format!("{KEY_HEX}\n"), format!("  {upper}\r\n\t")] {
            fs::write(&path, good).unwrap();
            let key = StoreKey::from_file(&path).unwrap();
            assert_eq!(key.0.as_slice(), StoreKey::from_hex(KEY_HEX).unwrap().0.as_slice());
        }
        let secretish = "zz".repeat(32);
        let too_long = format!("{KEY_HEX}00");
        let bad: [&[u8]; 6] =
            [b"", &KEY_HEX.as_bytes()[..62], too_long.as_bytes(), secretish.as_bytes(), &[0xff; 64], &[b'0'; 300]];
        for contents in bad {
            fs::write(&path, contents).unwrap();
            let error = StoreKey::from_file(&path).unwrap_err();
            assert!(matches!(error, Error::InvalidKeyFile { .. }), "{error:?}");
            assert!(!error.to_string().contains("zz"), "{error}");
        }
        let error = StoreKey::from_file(tmp.path().join("missing")).unwrap_err();
        assert!(matches!(error, Error::ReadKeyFile { .. }), "{error:?}");
        assert!(matches!(StoreKey::from_hex(&KEY_HEX[2..]), Err(Error::InvalidKey { .. })));
        assert!(matches!(StoreKey::from_hex(&format!(" {}", &KEY_HEX[1..])), Err(Error::InvalidKey { .. })));
    }
}
