//! Volumes as folders: Secret, ConfigMap, projected (with the downward
//! API), emptyDir and PVC; items, modes, and paths rewritten under mounts.

use super::*;

/// Files a Secret, ConfigMap, projected or downward API volume holds:
/// relative path → (content, mode).
pub(super) type Files = BTreeMap<PathBuf, (Vec<u8>, u32)>;

impl Worker {
    /// Host folders of the volumes that are not resynced (emptyDir, PVC, ...).
    pub(super) fn mounted_volumes(&self) -> Vec<(String, PathBuf)> {
        let volumes = self.pod.spec.as_ref().and_then(|s| s.volumes.clone()).unwrap_or_default();
        volumes.iter().filter_map(|v| Some((v.name.clone(), self.plain_volume_dir(v)?))).collect()
    }

    /// The folder of an emptyDir, PVC, ephemeral or hostPath volume; `None`
    /// for other kinds.
    pub(super) fn plain_volume_dir(&self, volume: &Volume) -> Option<PathBuf> {
        let namespace = &self.key.0;
        let pvc = self.shared.config.work_dir.join("pvc").join(namespace);
        if volume.empty_dir.is_some() {
            Some(self.dir.join("volumes").join(&volume.name))
        } else if let Some(claim) = &volume.persistent_volume_claim {
            relative(&claim.claim_name).ok().map(|c| pvc.join(c))
        } else if volume.ephemeral.is_some() {
            relative(&format!("{}-{}", self.key.1, volume.name)).ok().map(|c| pvc.join(c))
        } else {
            volume.host_path.as_ref().map(|h| PathBuf::from(&h.path))
        }
    }

    /// Files of a Secret, ConfigMap, projected or downward API volume;
    /// `Ok(None)` for other kinds.
    pub(super) async fn volume_files(&self, volume: &Volume) -> Result<Option<Files>, String> {
        let mut files = Files::new();
        if let Some(s) = &volume.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let optional = s.optional.unwrap_or(false);
            if let Some(data) = self.secret(&name, optional).await? {
                key_files(
                    &mut files,
                    &data,
                    s.items.as_deref(),
                    s.default_mode,
                    optional,
                    &format!("secret {name:?}"),
                )?;
            }
        } else if let Some(c) = &volume.config_map {
            let optional = c.optional.unwrap_or(false);
            if let Some(data) = self.config_map(&c.name, optional).await? {
                let what = format!("configmap {:?}", c.name);
                key_files(&mut files, &data, c.items.as_deref(), c.default_mode, optional, &what)?;
            }
        } else if let Some(p) = &volume.projected {
            for source in p.sources.as_deref().unwrap_or_default() {
                if let Some(s) = &source.secret {
                    let optional = s.optional.unwrap_or(false);
                    if let Some(data) = self.secret(&s.name, optional).await? {
                        let what = format!("secret {:?}", s.name);
                        key_files(&mut files, &data, s.items.as_deref(), p.default_mode, optional, &what)?;
                    }
                } else if let Some(c) = &source.config_map {
                    let optional = c.optional.unwrap_or(false);
                    if let Some(data) = self.config_map(&c.name, optional).await? {
                        let what = format!("configmap {:?}", c.name);
                        key_files(&mut files, &data, c.items.as_deref(), p.default_mode, optional, &what)?;
                    }
                } else if let Some(d) = &source.downward_api {
                    for item in d.items.as_deref().unwrap_or_default() {
                        self.downward_file(&mut files, &item.path, item.field_ref.as_ref(), item.mode, p.default_mode)?;
                    }
                } else {
                    debug!(volume = volume.name, "projected source not supported; left out");
                }
            }
        } else if let Some(d) = &volume.downward_api {
            for item in d.items.as_deref().unwrap_or_default() {
                self.downward_file(&mut files, &item.path, item.field_ref.as_ref(), item.mode, d.default_mode)?;
            }
        } else {
            return Ok(None);
        }
        Ok(Some(files))
    }

    pub(super) fn downward_file(
        &self,
        files: &mut Files,
        path: &str,
        field: Option<&k8s_openapi::api::core::v1::ObjectFieldSelector>,
        mode: Option<i32>,
        default_mode: Option<i32>,
    ) -> Result<(), String> {
        let Some(field) = field else {
            return Err(format!("downward API file {path:?}: only fieldRef is supported"));
        };
        let value = match field.field_path.as_str() {
            "metadata.labels" => map_lines(self.pod.metadata.labels.as_ref()),
            "metadata.annotations" => map_lines(self.pod.metadata.annotations.as_ref()),
            other => self.field(other)?,
        };
        files.insert(relative(path)?, (value.into_bytes(), file_mode(mode.or(default_mode))));
        Ok(())
    }

    pub(super) async fn secret(&self, name: &str, optional: bool) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
        let api: Api<Secret> = Api::namespaced(self.shared.client.clone(), &self.key.0);
        match api.get_opt(name).await.map_err(|e| format!("secret {name:?}: {e}"))? {
            Some(secret) => {
                let data = secret.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0));
                Ok(Some(data.collect()))
            }
            None if optional => Ok(None),
            None => Err(format!("secret {name:?} not found")),
        }
    }

    pub(super) async fn config_map(
        &self,
        name: &str,
        optional: bool,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
        let api: Api<ConfigMap> = Api::namespaced(self.shared.client.clone(), &self.key.0);
        match api.get_opt(name).await.map_err(|e| format!("configmap {name:?}: {e}"))? {
            Some(cm) => {
                let text = cm.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes()));
                let binary = cm.binary_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0));
                Ok(Some(text.chain(binary).collect()))
            }
            None if optional => Ok(None),
            None => Err(format!("configmap {name:?} not found")),
        }
    }

    /// Writes a volume's files, replacing each changed one atomically
    /// (temporary file, then rename) and removing those that went away.
    pub(super) fn write_volume(&mut self, volume: &str, dir: &Path, files: &Files) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (path, (content, mode)) in files {
            let target = dir.join(path);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let unchanged = std::fs::read(&target).is_ok_and(|old| old == *content)
                && std::fs::metadata(&target).is_ok_and(|m| m.permissions().mode() & 0o777 == *mode);
            if unchanged {
                continue;
            }
            let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let tmp = target.with_file_name(format!(".{name}.kubelet-tmp"));
            std::fs::write(&tmp, content)?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(*mode))?;
            std::fs::rename(&tmp, &target)?;
        }
        let now: BTreeSet<PathBuf> = files.keys().cloned().collect();
        if let Some(before) = self.written.get(volume) {
            for gone in before.difference(&now) {
                let _ = std::fs::remove_file(dir.join(gone));
            }
        }
        self.written.insert(volume.to_owned(), now);
        Ok(())
    }
}

/// Files of a Secret or ConfigMap: every key, or the `items` mapping.
pub(super) fn key_files(
    files: &mut Files,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    optional: bool,
    what: &str,
) -> Result<(), String> {
    match items {
        None => {
            for (k, v) in data {
                files.insert(relative(k)?, (v.clone(), file_mode(default_mode)));
            }
        }
        Some(items) => {
            for item in items {
                match data.get(&item.key) {
                    Some(v) => {
                        files.insert(relative(&item.path)?, (v.clone(), file_mode(item.mode.or(default_mode))));
                    }
                    None if optional => {}
                    None => return Err(format!("{what}: no key {:?}", item.key)),
                }
            }
        }
    }
    Ok(())
}

/// A file's mode: the volume's, always readable by its owner (us).
pub(super) fn file_mode(mode: Option<i32>) -> u32 {
    mode.and_then(|m| u32::try_from(m).ok()).unwrap_or(0o644) & 0o777 | 0o400
}

/// `path` if it is relative and stays inside its folder.
pub(super) fn relative(path: &str) -> Result<PathBuf, String> {
    let p = Path::new(path);
    let inside = !path.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    if inside { Ok(p.to_owned()) } else { Err(format!("path {path:?} must be relative, without `..`")) }
}

pub(super) fn map_lines(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter().flatten().map(|(k, v)| format!("{k}={v:?}\n")).collect()
}

/// Rewrites a path under a volume mount to the host folder of that volume
/// (longest mount wins, on path component boundaries); `--flag=<path>` is
/// rewritten after the `=`. Anything else is returned unchanged.
pub(super) fn rewrite(value: &str, mounts: &[(String, PathBuf)]) -> String {
    if value.starts_with('-')
        && let Some((flag, path)) = value.split_once('=')
        && path.starts_with('/')
    {
        return format!("{flag}={}", rewrite(path, mounts));
    }
    let under = |mount: &str| {
        let mount = if mount.is_empty() { "/" } else { mount };
        if value == mount {
            Some("")
        } else if mount == "/" {
            value.strip_prefix('/')
        } else {
            value.strip_prefix(mount)?.strip_prefix('/')
        }
    };
    let best = mounts.iter().filter_map(|(m, host)| Some((m.len(), host, under(m)?))).max_by_key(|(len, ..)| *len);
    match best {
        Some((_, host, "")) => host.display().to_string(),
        Some((_, host, rest)) => host.join(rest).display().to_string(),
        None => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounts() -> Vec<(String, PathBuf)> {
        vec![
            ("/etc/torcus/tls".to_owned(), PathBuf::from("/w/tls")),
            ("/etc/torcus".to_owned(), PathBuf::from("/w/etc")),
            ("/tmp".to_owned(), PathBuf::from("/w/tmp")),
        ]
    }

    #[test]
    fn rewrites_paths_under_mounts() {
        let m = mounts();
        assert_eq!(rewrite("/etc/torcus/tls", &m), "/w/tls");
        assert_eq!(rewrite("/etc/torcus/tls/ca.crt", &m), "/w/tls/ca.crt");
        assert_eq!(rewrite("/etc/torcus/config/cluster.json", &m), "/w/etc/config/cluster.json");
        assert_eq!(rewrite("/etc/torcus-other", &m), "/etc/torcus-other");
        assert_eq!(rewrite("/tmpfoo", &m), "/tmpfoo");
        assert_eq!(rewrite("--config=/etc/torcus/tls/x", &m), "--config=/w/tls/x");
        assert_eq!(rewrite("serve", &m), "serve");
        assert_eq!(rewrite("relative/etc/torcus", &m), "relative/etc/torcus");
    }

    #[test]
    fn volume_paths_stay_inside() {
        assert!(relative("a/b.crt").is_ok());
        assert!(relative("../x").is_err());
        assert!(relative("/abs").is_err());
        assert!(relative("").is_err());
    }

    #[test]
    fn items_map_keys_to_paths() {
        let data = BTreeMap::from([("k".to_owned(), b"v".to_vec()), ("other".to_owned(), b"o".to_vec())]);
        let items = [KeyToPath { key: "k".to_owned(), path: "sub/file".to_owned(), mode: Some(0o400) }];
        let mut files = Files::new();
        key_files(&mut files, &data, Some(&items), None, false, "secret").unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[Path::new("sub/file")], (b"v".to_vec(), 0o400));
        let missing = [KeyToPath { key: "nope".to_owned(), path: "f".to_owned(), mode: None }];
        assert!(key_files(&mut Files::new(), &data, Some(&missing), None, false, "secret").is_err());
        assert!(key_files(&mut Files::new(), &data, Some(&missing), None, true, "secret").is_ok());
    }
}
