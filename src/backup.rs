//! `dsevents backup`: a consistent copy of the database while `serve`
//! writes to it.
//!
//! `VACUUM INTO` reads the whole database inside one read transaction, so
//! the copy is a snapshot even as deliveries keep arriving, and in WAL mode
//! it does not block the writer. (The online backup API restarts whenever
//! another connection writes, so under steady load it may never finish.)

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use rusqlite::{Connection, OpenFlags};

use crate::cli::DbArg;
use crate::output::print_line;
use crate::progress;

#[derive(Debug, Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub db: DbArg,

    /// Path of the copy to write.
    #[arg(value_name = "DEST")]
    pub dest: PathBuf,

    /// Replace DEST if it exists.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: BackupArgs) -> anyhow::Result<()> {
    if args.dest.is_dir() {
        bail!(
            "DEST {} is a directory; give the path of the file to write, such as {}",
            args.dest.display(),
            args.dest.join("dsevents-backup.db").display()
        );
    }
    if args.dest.exists() && !args.force {
        bail!("{} already exists; pass --force to replace it, or choose another path", args.dest.display());
    }
    if same_file(&args.db.db, &args.dest) {
        bail!("DEST {} is the database itself; choose another path", args.dest.display());
    }
    if let Some(parent) = args.dest.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        if !parent.is_dir() {
            bail!(
                "cannot write {}: the directory {} does not exist; create it or choose another path",
                args.dest.display(),
                parent.display()
            );
        }
    }
    let connection = crate::store::open_existing(&args.db.db)?;

    let started = Instant::now();
    let spinner = progress::spinner("copying database");
    let deliveries = backup(&connection, &args.dest)?;
    spinner.finish_and_clear();

    let bytes = std::fs::metadata(&args.dest).map(|metadata| metadata.len()).unwrap_or(0);
    print_line(format_args!(
        "backed up {} deliveries to {} ({bytes} bytes, integrity ok) in {:.1} s",
        deliveries,
        args.dest.display(),
        started.elapsed().as_secs_f64()
    ))?;
    Ok(())
}

/// Writes a snapshot of `connection`'s database to `dest` (replacing it),
/// checks it with `PRAGMA integrity_check`, and returns its delivery count.
pub fn backup(connection: &Connection, dest: &Path) -> anyhow::Result<i64> {
    // Write next to DEST, then rename: an existing DEST is replaced only by
    // a complete, checked copy.
    let file_name = dest.file_name().context("DEST has no file name")?.to_string_lossy().to_string();
    let partial = dest.with_file_name(format!(".{file_name}.partial"));
    if partial.exists() {
        std::fs::remove_file(&partial).with_context(|| format!("cannot remove {}", partial.display()))?;
    }
    let partial_text = partial.to_str().context("DEST path is not valid UTF-8")?;
    connection
        .execute("VACUUM INTO ?1", [partial_text])
        .with_context(|| {
            format!(
                "cannot write the copy of the database to {} (through the temporary file {})",
                dest.display(),
                partial.display()
            )
        })?;

    let copy = Connection::open_with_flags(&partial, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let check: String = copy.query_row("PRAGMA integrity_check", [], |row| row.get(0))?;
    let deliveries: i64 = copy.query_row("SELECT count(*) FROM deliveries", [], |row| row.get(0))?;
    drop(copy);
    if check != "ok" {
        // Keep the partial file for inspection; DEST is untouched.
        bail!("the copy at {} failed its integrity check: {check}", partial.display());
    }
    std::fs::rename(&partial, dest).with_context(|| format!("cannot move the copy to {}", dest.display()))?;
    Ok(deliveries)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
