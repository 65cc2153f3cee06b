//! Watching pods: binding those no scheduler binds, and a worker per pod.

use super::*;

/// Watches pods: binds unbound ones to this node and hands the ones bound
/// to it to a worker each.
pub(super) async fn watch_pods(shared: Arc<Shared>, stop: CancellationToken, tasks: TaskTracker) {
    let api: Api<Pod> = match &shared.config.namespace {
        Some(ns) => Api::namespaced(shared.client.clone(), ns),
        None => Api::all(shared.client.clone()),
    };
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut workers: HashMap<String, watch::Sender<Pod>> = HashMap::new();
    let mut binding: HashSet<String> = HashSet::new();
    let mut listed: Option<HashSet<String>> = None;
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => break,
            event = stream.next() => event,
        };
        let Some(event) = event else { break };
        let pod = match event {
            Err(e) => {
                warn!(error = %e, "pod watch failed; retrying");
                continue;
            }
            Ok(watcher::Event::Init) => {
                listed = Some(HashSet::new());
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(listed) = listed.take() {
                    // Pods deleted while the watch was down.
                    workers.retain(|uid, _| listed.contains(uid));
                }
                continue;
            }
            Ok(watcher::Event::Delete(pod)) => {
                let uid = pod.uid().unwrap_or_default();
                workers.remove(&uid);
                binding.remove(&uid);
                continue;
            }
            Ok(watcher::Event::InitApply(pod)) => {
                if let Some(listed) = listed.as_mut() {
                    listed.insert(pod.uid().unwrap_or_default());
                }
                pod
            }
            Ok(watcher::Event::Apply(pod)) => pod,
        };
        let Some(uid) = pod.uid() else { continue };
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
        if node.is_empty() {
            if pod.metadata.deletion_timestamp.is_none() && binding.insert(uid) {
                let span = info_span!("bind", ns = pod.namespace(), pod = pod.name_any());
                tasks.spawn(bind(shared.clone(), pod, stop.clone()).instrument(span));
            }
        } else if node == shared.config.node_name {
            binding.remove(&uid);
            match workers.get(&uid) {
                // A closed channel: the worker finished (it deleted the pod).
                Some(tx) => {
                    let _ = tx.send(pod);
                }
                None => {
                    let (tx, rx) = watch::channel(pod.clone());
                    workers.insert(uid, tx);
                    let span = info_span!("pod", ns = pod.namespace(), pod = pod.name_any());
                    match Worker::new(shared.clone(), pod, rx, stop.clone()) {
                        Some(worker) => {
                            tasks.spawn(worker.run().instrument(span));
                        }
                        None => warn!(parent: &span, "pod without namespace or name; skipped"),
                    }
                }
            }
        }
    }
}

pub(super) async fn bind(shared: Arc<Shared>, pod: Pod, stop: CancellationToken) {
    let (Some(namespace), Some(name)) = (pod.metadata.namespace.clone(), pod.metadata.name.clone()) else { return };
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
            uid: pod.metadata.uid.clone(),
            ..ObjectMeta::default()
        },
        target: ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Node".to_owned()),
            name: Some(shared.config.node_name.clone()),
            ..ObjectReference::default()
        },
    };
    let api = shared.pods_api(&namespace);
    for attempt in 1..=5 {
        match api.create_subresource::<_, Value>("binding", &name, &PostParams::default(), &binding).await {
            Ok(_) => {
                debug!("bound");
                return;
            }
            // Bound elsewhere meanwhile, or gone.
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => return,
            Err(e) => {
                warn!(attempt, error = %e, "binding failed");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}
