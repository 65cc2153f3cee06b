//! One pod's worker: prepares its volumes and environment, runs its
//! container as a process, restarts it with backoff, probes it, and reports
//! its status; terminates it gracefully when the pod is deleted.

use super::*;

/// Why a pod's container is not running.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Waiting {
    pub(super) reason: String,
    pub(super) message: String,
}

impl Waiting {
    pub(super) fn new(reason: &str, message: impl Into<String>) -> Self {
        Self { reason: reason.to_owned(), message: message.into() }
    }
}

/// The container of a pod, as far as the kubelet is concerned.
#[derive(Debug)]
pub(super) enum Run {
    /// Not started: it cannot be yet, or cannot at all.
    Waiting(Waiting),
    Running(Proc),
    /// Exited; restarts at `at`.
    BackOff {
        at: Instant,
        message: String,
    },
    /// Kept down by `hold_down`.
    Held,
    /// Exited for good (restart policy Never or OnFailure).
    Done,
}

/// A running process, in a process group of its own.
#[derive(Debug)]
pub(super) struct Proc {
    pub(super) child: tokio::process::Child,
    pub(super) pid: u32,
    pub(super) started_at: String,
    pub(super) since: Instant,
    /// Reaped: the process group id may belong to someone else by now.
    pub(super) exited: bool,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.exited {
            signal_group(self.pid, Signal::SIGKILL);
        }
    }
}

/// How a run ended.
#[derive(Clone, Debug)]
pub(super) struct Terminated {
    pub(super) exit_code: i32,
    pub(super) signal: Option<i32>,
    pub(super) reason: String,
    pub(super) started_at: String,
    pub(super) finished_at: String,
}

impl Terminated {
    pub(super) fn to_json(&self) -> Value {
        let mut t = json!({
            "exitCode": self.exit_code,
            "reason": self.reason,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
        });
        if let Some(signal) = self.signal {
            t["signal"] = json!(signal);
        }
        t
    }
}

/// Everything needed to start (and restart) the container.
#[derive(Debug)]
pub(super) struct Launch {
    pub(super) program: PathBuf,
    pub(super) args: Vec<String>,
    pub(super) env: Vec<(String, String)>,
    pub(super) cwd: PathBuf,
    pub(super) readiness: Option<Probe>,
    pub(super) liveness: Option<Probe>,
    pub(super) ports: Vec<ContainerPort>,
    /// Volumes rewritten on every resync: (volume, folder).
    pub(super) synced: Vec<(Volume, PathBuf)>,
}

/// One pod (one UID) bound to this node.
pub(super) struct Worker {
    pub(super) shared: Arc<Shared>,
    pub(super) api: Api<Pod>,
    pub(super) key: PodKey,
    pub(super) uid: String,
    pub(super) pod: Pod,
    pub(super) updates: watch::Receiver<Pod>,
    pub(super) poke: Arc<Notify>,
    pub(super) stop: CancellationToken,
    /// `<work_dir>/pods/<ns>_<pod>_<uid>`.
    pub(super) dir: PathBuf,
    pub(super) log: PathBuf,
    pub(super) ip: Option<Ipv4Addr>,
    pub(super) start_time: String,
    pub(super) launch: Option<Launch>,
    pub(super) run: Run,
    pub(super) prepare_at: Option<Instant>,
    pub(super) resync_at: Option<Instant>,
    /// Files last written per volume, to remove those that went away.
    pub(super) written: HashMap<String, BTreeSet<PathBuf>>,
    pub(super) restart_count: i32,
    /// Consecutive quick exits, for the backoff.
    pub(super) crashes: u32,
    pub(super) ever_started: bool,
    pub(super) last: Option<Terminated>,
    pub(super) ready: bool,
    pub(super) readiness: ProbeState,
    pub(super) liveness: ProbeState,
    /// Condition type → (status, last transition time).
    pub(super) conditions: BTreeMap<&'static str, (bool, String)>,
    /// Status last written, to write only changes.
    pub(super) reported: Option<Value>,
}

pub(super) enum Wake {
    Stop,
    Gone,
    Update,
    Poke,
    Exited(std::io::Result<ExitStatus>),
    Prepare,
    Restart,
    Readiness,
    Liveness,
    Resync,
}

impl Worker {
    pub(super) fn new(
        shared: Arc<Shared>,
        pod: Pod,
        updates: watch::Receiver<Pod>,
        stop: CancellationToken,
    ) -> Option<Self> {
        let namespace = pod.metadata.namespace.clone()?;
        let name = pod.metadata.name.clone()?;
        let uid = pod.metadata.uid.clone()?;
        let dir = shared.config.work_dir.join("pods").join(format!("{namespace}_{name}_{uid}"));
        let poke = Arc::new(Notify::new());
        let key = key(&namespace, &name);
        let log = shared.log_path(&key);
        shared
            .lock()
            .pods
            .insert(key.clone(), Slot { uid: uid.clone(), pid: None, volumes: HashMap::new(), poke: poke.clone() });
        Some(Self {
            api: shared.pods_api(&namespace),
            shared,
            key,
            uid,
            pod,
            updates,
            poke,
            stop,
            dir,
            log,
            ip: None,
            start_time: now(),
            launch: None,
            run: Run::Waiting(Waiting::new("ContainerCreating", "")),
            prepare_at: None,
            resync_at: None,
            written: HashMap::new(),
            restart_count: 0,
            crashes: 0,
            ever_started: false,
            last: None,
            ready: false,
            readiness: ProbeState::default(),
            liveness: ProbeState::default(),
            conditions: BTreeMap::new(),
            reported: None,
        })
    }

    pub(super) async fn run(mut self) {
        let terminal =
            matches!(self.pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"));
        if terminal {
            // Finished under an earlier kubelet: nothing to run, only to delete.
            self.run = Run::Done;
        } else if self.pod.metadata.deletion_timestamp.is_none() {
            self.try_prepare().await;
        }
        loop {
            if self.pod.metadata.deletion_timestamp.is_some() {
                self.terminate_and_delete().await;
                break;
            }
            if !terminal {
                self.report().await;
            }
            let restart_at = match &self.run {
                Run::BackOff { at, .. } => Some(*at),
                _ => None,
            };
            let (prepare_at, ready_at, live_at, resync_at) =
                (self.prepare_at, self.readiness.next, self.liveness.next, self.resync_at);
            let wake = tokio::select! {
                () = self.stop.cancelled() => Wake::Stop,
                changed = self.updates.changed() => if changed.is_ok() { Wake::Update } else { Wake::Gone },
                () = self.poke.notified() => Wake::Poke,
                status = exited(&mut self.run) => Wake::Exited(status),
                () = sleep_until(prepare_at) => Wake::Prepare,
                () = sleep_until(restart_at) => Wake::Restart,
                () = sleep_until(ready_at) => Wake::Readiness,
                () = sleep_until(live_at) => Wake::Liveness,
                () = sleep_until(resync_at) => Wake::Resync,
            };
            match wake {
                Wake::Stop => {
                    self.kill().await;
                    break;
                }
                Wake::Gone => {
                    info!("pod is gone from the API; killing its process");
                    self.kill().await;
                    break;
                }
                Wake::Update => self.pod = self.updates.borrow_and_update().clone(),
                Wake::Poke => self.apply_hold().await,
                Wake::Exited(status) => self.exited(status, None),
                Wake::Prepare => self.try_prepare().await,
                Wake::Restart => self.spawn(),
                Wake::Readiness => self.probe_readiness().await,
                Wake::Liveness => self.probe_liveness().await,
                Wake::Resync => self.resync().await,
            }
        }
        let mut state = self.shared.lock();
        let current = state.pods.get(&self.key).is_some_and(|slot| slot.uid == self.uid);
        if current {
            state.pods.remove(&self.key);
        }
        drop(state);
        if current {
            self.shared.release_ip(&self.key);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    pub(super) fn restart_policy(&self) -> &str {
        self.pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()).unwrap_or("Always")
    }

    /// Prepares the container (volumes, environment) and starts it, or
    /// tells why it cannot and retries later.
    pub(super) async fn try_prepare(&mut self) {
        self.prepare_at = None;
        match self.prepare().await {
            Ok(launch) => {
                let volumes = launch.synced.iter().map(|(v, dir)| (v.name.clone(), dir.clone()));
                let mut all: HashMap<String, PathBuf> = volumes.collect();
                all.extend(self.mounted_volumes());
                if let Some(slot) = self.shared.lock().pods.get_mut(&self.key) {
                    slot.volumes = all;
                }
                self.launch = Some(launch);
                self.resync_at = Some(Instant::now() + RESYNC);
                self.spawn();
            }
            Err(waiting) => {
                if !matches!(&self.run, Run::Waiting(w) if *w == waiting) {
                    warn!(reason = waiting.reason, message = waiting.message, "container cannot start");
                    log_line(&self.log, &format!("cannot start: {}: {}", waiting.reason, waiting.message));
                }
                self.run = Run::Waiting(waiting);
                self.prepare_at = Some(Instant::now() + PREPARE_RETRY);
            }
        }
    }

    pub(super) async fn prepare(&mut self) -> Result<Launch, Waiting> {
        let spec = self.pod.spec.clone().unwrap_or_default();
        if spec.containers.len() != 1 {
            return Err(Waiting::new(
                "Unsupported",
                format!("the process kubelet runs pods of one container; this one has {}", spec.containers.len()),
            ));
        }
        if spec.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
            return Err(Waiting::new("Unsupported", "the process kubelet does not run init containers"));
        }
        let container = spec.containers[0].clone();
        let image = container.image.clone().unwrap_or_default();
        if !image.contains("torcus-node") {
            return Err(Waiting::new(
                "ImageNotRunnable",
                format!("image {image:?} has no local program; the process kubelet runs torcus-node images only"),
            ));
        }
        let ip = self.shared.allocate_ip(&self.key).ok_or_else(|| Waiting::new("NoPodIP", "no free pod IP"))?;
        self.ip = Some(ip);
        let hostname = spec.hostname.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| self.key.1.clone());
        let names = match spec.subdomain.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => {
                let service = format!("{hostname}.{sub}.{}.svc", self.key.0);
                vec![format!("{service}.{CLUSTER_DOMAIN}"), service]
            }
            None => Vec::new(),
        };
        self.shared.set_hosts(&self.key, names);

        let creating = |message: String| Waiting::new("ContainerCreating", message);
        let mut folders: HashMap<String, PathBuf> = HashMap::new();
        let mut synced = Vec::new();
        for volume in spec.volumes.as_deref().unwrap_or_default() {
            if let Some(dir) = self.plain_volume_dir(volume) {
                std::fs::create_dir_all(&dir)
                    .map_err(|e| creating(format!("volume {:?}: creating {}: {e}", volume.name, dir.display())))?;
                folders.insert(volume.name.clone(), dir);
            } else if let Some(files) = self.volume_files(volume).await.map_err(creating)? {
                let dir = self.dir.join("volumes").join(&volume.name);
                self.write_volume(&volume.name, &dir, &files)
                    .map_err(|e| creating(format!("volume {:?}: {e}", volume.name)))?;
                folders.insert(volume.name.clone(), dir.clone());
                synced.push((volume.clone(), dir));
            } else {
                return Err(Waiting::new(
                    "Unsupported",
                    format!("volume {:?} is of a kind the process kubelet does not support", volume.name),
                ));
            }
        }

        let config_error = |message: String| Waiting::new("CreateContainerConfigError", message);
        let mut mounts: Vec<(String, PathBuf)> = Vec::new();
        for mount in container.volume_mounts.as_deref().unwrap_or_default() {
            let dir = folders
                .get(&mount.name)
                .ok_or_else(|| config_error(format!("volume mount {:?}: no such volume", mount.name)))?;
            let dir = match mount.sub_path.as_deref().filter(|p| !p.is_empty()) {
                Some(sub) => {
                    let sub = relative(sub).map_err(|e| config_error(format!("subPath {sub:?}: {e}")))?;
                    let dir = dir.join(sub);
                    let _ = std::fs::create_dir_all(&dir);
                    dir
                }
                None => dir.clone(),
            };
            mounts.push((mount.mount_path.trim_end_matches('/').to_owned(), dir));
        }

        let mut env = self.container_env(&container).await.map_err(config_error)?;
        for (_, value) in &mut env {
            *value = rewrite(value, &mounts);
        }
        let args =
            container.args.clone().unwrap_or_default().iter().map(|a| rewrite(&expand(a, &env), &mounts)).collect();
        if container.command.as_ref().is_some_and(|c| !c.is_empty()) {
            debug!(command = ?container.command, "container command ignored; the image's program runs");
        }
        env.extend(self.shared.config.extra_env.iter().cloned());
        env.push(("HOSTNAME".to_owned(), hostname));
        env.push(("PATH".to_owned(), std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".to_owned())));
        env.push(("TORCUS_DIE_WITH_PARENT".to_owned(), "1".to_owned()));
        env.push((WORK_DIR_ENV.to_owned(), self.shared.config.work_dir.display().to_string()));
        env.push((HOSTS_FILE_ENV.to_owned(), self.shared.hosts_file().display().to_string()));
        let cwd = match container.working_dir.as_deref() {
            Some(dir) if !dir.is_empty() => PathBuf::from(rewrite(dir, &mounts)),
            _ => self.dir.clone(),
        };
        std::fs::create_dir_all(&cwd).map_err(|e| config_error(format!("working dir {}: {e}", cwd.display())))?;
        Ok(Launch {
            program: self.shared.config.node_binary.clone(),
            args,
            env,
            cwd,
            readiness: container.readiness_probe.clone(),
            liveness: container.liveness_probe.clone(),
            ports: container.ports.clone().unwrap_or_default(),
            synced,
        })
    }

    /// Rewrites Secret, ConfigMap and downward API volumes (certificates
    /// rotate in place).
    pub(super) async fn resync(&mut self) {
        self.resync_at = Some(Instant::now() + RESYNC);
        let Some(launch) = &self.launch else { return };
        let volumes = launch.synced.clone();
        for (volume, dir) in volumes {
            match self.volume_files(&volume).await {
                Ok(Some(files)) => {
                    if let Err(e) = self.write_volume(&volume.name, &dir, &files) {
                        warn!(volume = volume.name, error = %e, "volume not updated");
                    }
                }
                Ok(None) => {}
                Err(e) => debug!(volume = volume.name, error = e, "volume not updated"),
            }
        }
    }

    /// Starts the container's process (or notes why not).
    pub(super) fn spawn(&mut self) {
        if self.shared.is_held(&self.key) {
            self.run = Run::Held;
            return;
        }
        let Some(launch) = &self.launch else { return };
        let log = &self.log;
        let restart = if self.ever_started { self.restart_count + 1 } else { 0 };
        log_line(&self.log, &format!("starting {} {:?} (restart {restart})", launch.program.display(), launch.args));
        let started = (|| {
            let out = std::fs::File::options().create(true).append(true).open(log)?;
            let err = out.try_clone()?;
            let (program, args) = match self.shared.hosts_mount {
                true => with_hosts(&self.shared.hosts_file(), &launch.program, &launch.args),
                false => (launch.program.clone(), launch.args.clone()),
            };
            let (program, args) = self.shared.in_network(&self.key, program, args);
            let mut command = tokio::process::Command::new(program);
            command
                .args(args)
                .env_clear()
                .envs(launch.env.iter().map(|(k, v)| (k, v)))
                .current_dir(&launch.cwd)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .process_group(0)
                .kill_on_drop(true);
            command.spawn()
        })();
        if self.ever_started {
            self.restart_count += 1;
        }
        self.ever_started = true;
        match started.and_then(|child| child.id().map(|pid| (child, pid)).ok_or(std::io::ErrorKind::NotFound.into())) {
            Ok((child, pid)) => {
                info!(pid, restarts = self.restart_count, "process started");
                if let Some(slot) = self.shared.lock().pods.get_mut(&self.key) {
                    slot.pid = Some(pid);
                }
                let since = Instant::now();
                self.run = Run::Running(Proc { child, pid, started_at: now(), since, exited: false });
                self.ready = launch.readiness.is_none();
                self.readiness = ProbeState {
                    next: launch.readiness.as_ref().map(|_| since + Duration::from_millis(200)),
                    ..ProbeState::default()
                };
                self.liveness = ProbeState {
                    next: launch
                        .liveness
                        .as_ref()
                        .map(|p| since + secs(p.initial_delay_seconds, 0) + secs(p.period_seconds, 10)),
                    ..ProbeState::default()
                };
            }
            Err(e) => {
                warn!(error = %e, "process did not start");
                log_line(&self.log, &format!("cannot start the process: {e}"));
                let t = now();
                self.last = Some(Terminated {
                    exit_code: 128,
                    signal: None,
                    reason: "StartError".to_owned(),
                    started_at: t.clone(),
                    finished_at: t,
                });
                self.back_off(Duration::ZERO);
            }
        }
    }

    /// Handles the end of the process: restart with backoff, keep it down,
    /// or leave it finished, by the restart policy.
    pub(super) fn exited(&mut self, status: std::io::Result<ExitStatus>, reason: Option<&str>) {
        let Run::Running(mut proc) = std::mem::replace(&mut self.run, Run::Done) else { return };
        proc.exited = true;
        if let Some(slot) = self.shared.lock().pods.get_mut(&self.key) {
            slot.pid = None;
        }
        let (exit_code, signal) = match &status {
            Ok(s) => match (s.code(), s.signal()) {
                (Some(code), _) => (code, None),
                (None, Some(sig)) => (128 + sig, Some(sig)),
                (None, None) => (255, None),
            },
            Err(_) => (255, None),
        };
        let held = self.shared.is_held(&self.key);
        let reason = match reason {
            Some(r) => r,
            None if held => "HeldDown",
            None if exit_code == 0 => "Completed",
            None => "Error",
        };
        info!(exit_code, reason, "process exited");
        log_line(&self.log, &format!("process exited with code {exit_code} ({reason})"));
        self.last = Some(Terminated {
            exit_code,
            signal,
            reason: reason.to_owned(),
            started_at: proc.started_at.clone(),
            finished_at: now(),
        });
        self.ready = false;
        self.readiness = ProbeState::default();
        self.liveness = ProbeState::default();
        let restart = match self.restart_policy() {
            "Never" => false,
            "OnFailure" => exit_code != 0,
            _ => true,
        };
        if held {
            self.run = Run::Held;
        } else if restart {
            self.back_off(proc.since.elapsed());
        } else {
            self.run = Run::Done;
        }
    }

    pub(super) fn back_off(&mut self, ran: Duration) {
        if ran >= BACKOFF_RESET {
            self.crashes = 0;
        }
        let delay = Duration::from_secs(1 << self.crashes.min(4)).min(MAX_BACKOFF);
        self.crashes += 1;
        let message = format!("back-off {}s restarting failed container", delay.as_secs());
        self.run = Run::BackOff { at: Instant::now() + delay, message };
    }

    /// Follows a change of `hold_down`.
    pub(super) async fn apply_hold(&mut self) {
        let held = self.shared.is_held(&self.key);
        match (&mut self.run, held) {
            (Run::Running(proc), true) => {
                signal_group(proc.pid, Signal::SIGKILL);
                let status = proc.child.wait().await;
                self.exited(status, Some("HeldDown"));
            }
            (Run::BackOff { .. }, true) => self.run = Run::Held,
            (Run::Held, false) => {
                if self.launch.is_some() {
                    self.spawn();
                } else {
                    self.try_prepare().await;
                }
            }
            _ => {}
        }
    }

    /// Kills the process at once and waits for it.
    pub(super) async fn kill(&mut self) {
        if let Run::Running(proc) = &mut self.run {
            signal_group(proc.pid, Signal::SIGKILL);
            let _ = proc.child.wait().await;
            proc.exited = true;
        }
        if let Some(slot) = self.shared.lock().pods.get_mut(&self.key) {
            slot.pid = None;
        }
    }

    /// The pod is being deleted: SIGTERM, SIGKILL after the grace period
    /// (at most 10 s), then delete the pod object for good.
    pub(super) async fn terminate_and_delete(&mut self) {
        if let Run::Running(proc) = &mut self.run {
            let grace = self
                .pod
                .metadata
                .deletion_grace_period_seconds
                .or_else(|| self.pod.spec.as_ref()?.termination_grace_period_seconds)
                .unwrap_or(30);
            let grace = Duration::from_secs(u64::try_from(grace).unwrap_or(0)).min(MAX_GRACE);
            info!(?grace, "pod deleted; stopping its process");
            log_line(&self.log, "pod deleted; sending SIGTERM");
            signal_group(proc.pid, Signal::SIGTERM);
            let status = match tokio::time::timeout(grace, proc.child.wait()).await {
                Ok(status) => status,
                Err(_) => {
                    log_line(&self.log, "grace period over; sending SIGKILL");
                    signal_group(proc.pid, Signal::SIGKILL);
                    proc.child.wait().await
                }
            };
            self.exited(status, None);
        }
        self.run = Run::Done;
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions { uid: Some(self.uid.clone()), resource_version: None }),
            ..DeleteParams::default()
        };
        let name = self.key.1.clone();
        for attempt in 1..=30 {
            match self.api.delete(&name, &params).await {
                Ok(_) => return,
                // Gone already, or a new pod of that name.
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => return,
                Err(e) => warn!(attempt, error = %e, "deleting the pod failed"),
            }
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Writes the pod status if it changed since the last write.
    pub(super) async fn report(&mut self) {
        let status = self.status();
        if self.reported.as_ref() == Some(&status) {
            return;
        }
        let patch = json!({ "metadata": { "uid": self.uid }, "status": status });
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PatchParams::default() };
        match self.api.patch_status(&self.key.1, &params, &Patch::Merge(&patch)).await {
            Ok(_) => self.reported = Some(status),
            Err(e) => debug!(error = %e, "pod status not written"),
        }
    }

    pub(super) fn status(&mut self) -> Value {
        let running = matches!(self.run, Run::Running(_));
        let ready = running && self.ready;
        let phase = match &self.run {
            Run::Done if self.last.as_ref().is_some_and(|t| t.exit_code == 0) => "Succeeded",
            Run::Done if self.restart_policy() != "Always" => "Failed",
            _ if self.ever_started => "Running",
            _ => "Pending",
        };
        let prepared = self.launch.is_some();
        let conditions = vec![
            self.condition("PodReadyToStartContainers", prepared),
            self.condition("Initialized", true),
            self.condition("Ready", ready),
            self.condition("ContainersReady", ready),
            self.condition("PodScheduled", true),
        ];
        let state = match &self.run {
            Run::Waiting(w) => json!({ "waiting": { "reason": w.reason, "message": w.message } }),
            Run::Running(proc) => json!({ "running": { "startedAt": proc.started_at } }),
            Run::BackOff { message, .. } => json!({ "waiting": { "reason": "CrashLoopBackOff", "message": message } }),
            Run::Held | Run::Done => match &self.last {
                Some(t) => json!({ "terminated": t.to_json() }),
                None => json!({ "waiting": { "reason": "HeldDown", "message": "kept down by the test" } }),
            },
        };
        let last_state = match (&self.run, &self.last) {
            (Run::Held | Run::Done, _) | (_, None) => json!({}),
            (_, Some(t)) => json!({ "terminated": t.to_json() }),
        };
        let image_id = self.launch.as_ref().map(|l| format!("torcus-kubelet://{}", l.program.display()));
        let containers = self.pod.spec.as_ref().map(|s| s.containers.clone()).unwrap_or_default();
        let statuses: Vec<Value> = containers
            .iter()
            .map(|c| {
                let mut status = json!({
                    "name": c.name,
                    "image": c.image.clone().unwrap_or_default(),
                    "imageID": image_id.clone().unwrap_or_default(),
                    "ready": ready,
                    "started": running,
                    "restartCount": self.restart_count,
                    "state": state,
                    "lastState": last_state,
                });
                if let Run::Running(proc) = &self.run {
                    status["containerID"] = json!(format!("torcus-kubelet://{}", proc.pid));
                }
                status
            })
            .collect();
        let mut status = json!({
            "phase": phase,
            "hostIP": HOST_IP,
            "hostIPs": [{ "ip": HOST_IP }],
            "startTime": self.start_time,
            "conditions": conditions,
            "containerStatuses": statuses,
        });
        if let Some(ip) = self.ip {
            status["podIP"] = json!(ip.to_string());
            status["podIPs"] = json!([{ "ip": ip.to_string() }]);
        }
        status
    }

    pub(super) fn condition(&mut self, kind: &'static str, on: bool) -> Value {
        let entry = self.conditions.entry(kind).or_insert_with(|| (on, now()));
        if entry.0 != on {
            *entry = (on, now());
        }
        let mut condition = json!({
            "type": kind,
            "status": if on { "True" } else { "False" },
            "lastProbeTime": null,
            "lastTransitionTime": entry.1,
        });
        if !on && matches!(kind, "Ready" | "ContainersReady") {
            condition["reason"] = json!("ContainersNotReady");
        }
        condition
    }
}

/// A line from the kubelet in a pod's log.
pub(super) fn log_line(log: &Path, line: &str) {
    use std::io::Write as _;
    if let Ok(mut file) = std::fs::File::options().create(true).append(true).open(log) {
        let _ = writeln!(file, "==> torcus-kubelet {}: {line}", now());
    }
}

/// Waits for the process to end; never, when none runs.
pub(super) async fn exited(run: &mut Run) -> std::io::Result<ExitStatus> {
    match run {
        Run::Running(proc) => proc.child.wait().await,
        _ => std::future::pending().await,
    }
}

pub(super) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

pub(super) fn secs(value: Option<i32>, default: u64) -> Duration {
    Duration::from_secs(value.and_then(|v| u64::try_from(v).ok()).filter(|v| *v > 0).unwrap_or(default))
}
