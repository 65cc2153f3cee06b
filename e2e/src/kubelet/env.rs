//! A container's environment: values, Secret and ConfigMap references,
//! field references, and `$(VAR)` expansion as Kubernetes does it.

use super::*;

impl Worker {
    /// The container's environment: `envFrom`, then `env`, with `$(VAR)`
    /// references expanded.
    pub(super) async fn container_env(&self, container: &Container) -> Result<Vec<(String, String)>, String> {
        let mut env: Vec<(String, String)> = Vec::new();
        fn set(env: &mut Vec<(String, String)>, name: String, value: String) {
            match env.iter_mut().find(|(n, _)| *n == name) {
                Some(var) => var.1 = value,
                None => env.push((name, value)),
            }
        }
        for from in container.env_from.as_deref().unwrap_or_default() {
            let prefix = from.prefix.clone().unwrap_or_default();
            let data = if let Some(c) = &from.config_map_ref {
                self.config_map(&c.name, c.optional.unwrap_or(false)).await?
            } else if let Some(s) = &from.secret_ref {
                self.secret(&s.name, s.optional.unwrap_or(false)).await?
            } else {
                None
            };
            for (k, v) in data.unwrap_or_default() {
                set(&mut env, format!("{prefix}{k}"), String::from_utf8_lossy(&v).into_owned());
            }
        }
        for var in container.env.as_deref().unwrap_or_default() {
            let value = match &var.value_from {
                None => expand(var.value.as_deref().unwrap_or_default(), &env),
                Some(from) => {
                    if let Some(field) = &from.field_ref {
                        self.field(&field.field_path)?
                    } else if let Some(r) = &from.config_map_key_ref {
                        let optional = r.optional.unwrap_or(false);
                        match self.config_map(&r.name, optional).await?.and_then(|d| d.get(&r.key).cloned()) {
                            Some(v) => String::from_utf8_lossy(&v).into_owned(),
                            None if optional => continue,
                            None => {
                                return Err(format!("env {}: key {:?} not in configmap {:?}", var.name, r.key, r.name));
                            }
                        }
                    } else if let Some(r) = &from.secret_key_ref {
                        let optional = r.optional.unwrap_or(false);
                        match self.secret(&r.name, optional).await?.and_then(|d| d.get(&r.key).cloned()) {
                            Some(v) => String::from_utf8_lossy(&v).into_owned(),
                            None if optional => continue,
                            None => {
                                return Err(format!("env {}: key {:?} not in secret {:?}", var.name, r.key, r.name));
                            }
                        }
                    } else {
                        return Err(format!(
                            "env {}: only fieldRef, configMapKeyRef and secretKeyRef are supported",
                            var.name
                        ));
                    }
                }
            };
            set(&mut env, var.name.clone(), value);
        }
        Ok(env)
    }

    /// A downward API field of the pod.
    pub(super) fn field(&self, path: &str) -> Result<String, String> {
        let meta = &self.pod.metadata;
        let ip = self.ip.map(|ip| ip.to_string()).unwrap_or_default();
        let in_map = |map: Option<&BTreeMap<String, String>>, prefix: &str| {
            let k = path.strip_prefix(prefix)?.strip_suffix("']")?;
            Some(map.and_then(|m| m.get(k).cloned()).unwrap_or_default())
        };
        let spec = self.pod.spec.as_ref();
        let value = match path {
            "metadata.name" => meta.name.clone().unwrap_or_default(),
            "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
            "metadata.uid" => self.uid.clone(),
            "spec.nodeName" => self.shared.config.node_name.clone(),
            "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()).unwrap_or_default(),
            "status.podIP" | "status.podIPs" => ip,
            "status.hostIP" | "status.hostIPs" => HOST_IP.to_owned(),
            _ => in_map(meta.labels.as_ref(), "metadata.labels['")
                .or_else(|| in_map(meta.annotations.as_ref(), "metadata.annotations['"))
                .ok_or_else(|| format!("field {path:?} is not supported"))?,
        };
        Ok(value)
    }
}

/// Expands `$(VAR)` from `env` as Kubernetes does: unknown references stay
/// as they are, `$$` is a `$`.
pub(super) fn expand(value: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.iter().rev().find(|(n, _)| n == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&rest[i..i + end + 3]),
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_references_like_kubernetes() {
        let env = vec![("A".to_owned(), "1".to_owned()), ("B".to_owned(), "two".to_owned())];
        assert_eq!(expand("$(A)-$(B)", &env), "1-two");
        assert_eq!(expand("$(C) stays", &env), "$(C) stays");
        assert_eq!(expand("$$(A) escaped", &env), "$(A) escaped");
        assert_eq!(expand("$ alone $(", &env), "$ alone $(");
    }
}
