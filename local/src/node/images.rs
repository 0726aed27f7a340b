//! Image references → local programs. cellmesh-local runs containers as processes, so an
//! image is a name for a binary: `ghcr.io/cellmesh/cell:*` is `cellmesh-cell`,
//! `ghcr.io/cellmesh/operator:*` is `cellmesh-operator` (found next to the `cellmesh-local`
//! executable, else on `PATH`), and `busybox*` is "host": the container's command runs from
//! the host's filesystem (busybox's default command `sh`). `--image-map pattern=path`
//! adds or overrides entries (`pattern` may end in `*`; `path` may be `host`).

use std::path::{Path, PathBuf};

/// What an image runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Binary(PathBuf),
    Host,
}

impl Target {
    /// The image's entrypoint (used when the container sets no `command`).
    pub fn entrypoint(&self) -> Vec<String> {
        match self {
            Target::Binary(path) => vec![path.display().to_string()],
            Target::Host => vec!["sh".into()],
        }
    }

    /// A `command` naming the image's program by its file name (`cellmesh-cell`,
    /// `/usr/local/bin/cellmesh-cell`) runs the mapped binary.
    pub fn rewrite_program(&self, argv: &mut [String]) {
        if let (Target::Binary(path), Some(first)) = (self, argv.first_mut()) {
            let wanted = path.file_name();
            if wanted.is_some() && Path::new(first.as_str()).file_name() == wanted {
                *first = path.display().to_string();
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct ImageMap {
    entries: Vec<(String, Target)>,
}

fn matches(pattern: &str, image: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => image.starts_with(prefix),
        None => pattern == image,
    }
}

/// Finds `name` next to the running executable, else on `PATH`.
fn find_binary(name: &str) -> PathBuf {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(name)))
        .filter(|p| p.exists());
    if let Some(path) = beside {
        return path;
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

impl ImageMap {
    /// The defaults plus `overrides` (`pattern=path`), overrides first.
    pub fn new(overrides: &[String]) -> Result<Self, String> {
        let mut entries = Vec::new();
        for entry in overrides {
            let (pattern, path) = entry.split_once('=').ok_or_else(|| {
                format!("--image-map {entry:?}: expected image=path (or image=host)")
            })?;
            if pattern.is_empty() || path.is_empty() {
                return Err(format!(
                    "--image-map {entry:?}: image and path must not be empty"
                ));
            }
            let target = if path == "host" {
                Target::Host
            } else {
                Target::Binary(PathBuf::from(path))
            };
            entries.push((pattern.to_owned(), target));
        }
        for (pattern, binary) in [
            ("ghcr.io/cellmesh/cell*", "cellmesh-cell"),
            ("ghcr.io/cellmesh/operator*", "cellmesh-operator"),
        ] {
            entries.push((pattern.to_owned(), Target::Binary(find_binary(binary))));
        }
        for pattern in [
            "busybox*",
            "docker.io/busybox*",
            "docker.io/library/busybox*",
        ] {
            entries.push((pattern.to_owned(), Target::Host));
        }
        Ok(Self { entries })
    }

    pub fn resolve(&self, image: &str) -> Option<Target> {
        self.entries
            .iter()
            .find(|(pattern, _)| matches(pattern, image))
            .map(|(_, t)| t.clone())
    }

    /// `status.containerStatuses[].imageID`.
    pub fn image_id(&self, image: &str) -> String {
        match self.resolve(image) {
            Some(Target::Binary(path)) => format!("cellmesh-local://{}", path.display()),
            Some(Target::Host) => "cellmesh-local://host".to_owned(),
            None => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_known_images_and_overrides() {
        let map = ImageMap::new(&[
            "example.com/app:v1=/opt/app".into(),
            "busybox:1.36=/bin/bb".into(),
        ])
        .unwrap();
        assert_eq!(
            map.resolve("example.com/app:v1"),
            Some(Target::Binary("/opt/app".into()))
        );
        assert_eq!(
            map.resolve("busybox:1.36"),
            Some(Target::Binary("/bin/bb".into()))
        );
        assert_eq!(map.resolve("busybox"), Some(Target::Host));
        assert!(matches!(
            map.resolve("ghcr.io/cellmesh/cell:0.1.0"),
            Some(Target::Binary(p)) if p.ends_with("cellmesh-cell")
        ));
        assert_eq!(map.resolve("nginx"), None);
        assert!(ImageMap::new(&["nonsense".into()]).is_err());

        let cell = Target::Binary("/x/cellmesh-cell".into());
        let mut argv = vec!["/usr/local/bin/cellmesh-cell".to_owned(), "--port".into()];
        cell.rewrite_program(&mut argv);
        assert_eq!(argv[0], "/x/cellmesh-cell");
        let mut other = vec!["sh".to_owned()];
        cell.rewrite_program(&mut other);
        assert_eq!(other[0], "sh");
    }
}
