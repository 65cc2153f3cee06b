//! Writes the Torcus CustomResourceDefinitions to `crds/yaml/` (or the folder
//! given as the first argument).

fn main() -> anyhow::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/yaml"));
    std::fs::create_dir_all(&dir)?;
    for (file, crd) in torcus_crds::crds() {
        let path = dir.join(file);
        std::fs::write(&path, torcus_crds::to_yaml(&crd)?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
