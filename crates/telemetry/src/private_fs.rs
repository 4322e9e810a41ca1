//! Data at rest stays with the service's user, whatever the umask.
//!
//! Every directory a service makes for data (the data directory, the
//! credential database's, the spool's, the generated keys' and the
//! self-signed certificate's) is created 0700 and every data file 0600,
//! with the mode given at creation and set again right after it — never
//! left to the umask, which a unit file, a container runtime or an
//! operator's shell may have set to anything (`umask 000` included).
//!
//! A data directory that already exists open to the group or to others is
//! tightened to 0700 with a log line; one the service may not change (a
//! volume's mount point owned by root) is warned about and used as it is:
//! what the service creates inside it is private all the same.

use std::fs::{File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of every data directory.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every data file.
pub const FILE_MODE: u32 = 0o600;

/// Make `dir`, and any missing parent, with mode 0700. An existing `dir`
/// that the group or others may enter is tightened to 0700 (logged), or
/// warned about when that is not allowed.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    if dir.as_os_str().is_empty() {
        return Ok(());
    }
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            tighten(dir, meta.permissions().mode(), DIR_MODE, "directory");
            Ok(())
        }
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a directory", dir.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // Parents first, each 0700 as it is made (the umask can only
            // take bits away; set_permissions below puts them back exactly).
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty())
                && !parent.exists()
            {
                private_dir(parent)?;
            }
            match std::fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
                Ok(()) => {}
                // Made by someone else meanwhile: theirs, checked as any existing one.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {
                    return private_dir(dir);
                }
                Err(e) => return Err(e),
            }
            std::fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))
        }
        Err(e) => Err(e),
    }
}

/// Create `path`, which must not exist, for reading and writing with mode
/// 0600.
pub fn create_private_file(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)?;
    file.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(file)
}

/// Create or truncate `path` for writing (as `File::create`), mode 0600
/// whether it is new or was there.
pub fn open_private_file(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)?;
    file.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(file)
}

/// An existing data file the group or others may read: tightened to 0600
/// (logged), or warned about when that is not allowed.
pub fn private_file(path: &Path) -> io::Result<()> {
    let meta = std::fs::metadata(path)?;
    tighten(path, meta.permissions().mode(), FILE_MODE, "file");
    Ok(())
}

fn tighten(path: &Path, mode: u32, want: u32, what: &str) {
    if mode & 0o077 == 0 {
        return;
    }
    match std::fs::set_permissions(path, Permissions::from_mode(want)) {
        Ok(()) => tracing::warn!(
            path = %path.display(),
            was = %format!("{:04o}", mode & 0o7777),
            now = %format!("{want:04o}"),
            "data {what} was open to other users: tightened"
        ),
        Err(e) => tracing::warn!(
            path = %path.display(),
            mode = %format!("{:04o}", mode & 0o7777),
            error = %e,
            "data {what} is open to other users and cannot be tightened: what authrelay creates inside stays private, but fix its mode"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("authrelay-pfs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn new_directories_and_their_missing_parents_are_0700() {
        let root = scratch("new");
        let deep = root.join("a/b/c");
        private_dir(&deep).unwrap();
        for d in [&root, &root.join("a"), &root.join("a/b"), &deep] {
            assert_eq!(mode(d), 0o700, "{}", d.display());
        }
        // Again: nothing to do, no error.
        private_dir(&deep).unwrap();
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn an_existing_open_directory_is_tightened_and_a_file_in_its_place_refused() {
        let root = scratch("open");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::set_permissions(&root, Permissions::from_mode(0o777)).unwrap();
        private_dir(&root).unwrap();
        assert_eq!(mode(&root), 0o700);
        let file = root.join("f");
        std::fs::write(&file, "x").unwrap();
        assert!(private_dir(&file).is_err());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn private_files_are_0600_new_and_tightened_when_open() {
        let root = scratch("files");
        private_dir(&root).unwrap();
        let f = root.join("data");
        drop(create_private_file(&f).unwrap());
        assert_eq!(mode(&f), 0o600);
        assert_eq!(
            create_private_file(&f).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists,
            "never replaces"
        );
        std::fs::set_permissions(&f, Permissions::from_mode(0o644)).unwrap();
        private_file(&f).unwrap();
        assert_eq!(mode(&f), 0o600);
        // Rewritten in place: emptied, and 0600 even if it was not.
        std::fs::set_permissions(&f, Permissions::from_mode(0o666)).unwrap();
        drop(open_private_file(&f).unwrap());
        assert_eq!(mode(&f), 0o600);
        assert_eq!(std::fs::metadata(&f).unwrap().len(), 0);
        let g = root.join("new");
        drop(open_private_file(&g).unwrap());
        assert_eq!(mode(&g), 0o600);
        let _ = std::fs::remove_dir_all(&root);
    }
}
