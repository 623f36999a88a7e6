//! A PostgreSQL 15 server of its own, in a temporary directory (run as the
//! postgres user when the tests run as root: PostgreSQL refuses root), for
//! the live-database and forwarder tests.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Postgres {
    pub bin: PathBuf,
    pub data: PathBuf,
    pub port: u16,
    /// Whom the server runs as, when not as us.
    pub user: Option<String>,
    dir: tempfile::TempDir,
}

impl Postgres {
    pub fn start() -> Postgres {
        let bin = PathBuf::from("/usr/lib/postgresql/15/bin");
        assert!(
            bin.join("initdb").exists(),
            "PostgreSQL 15 is missing at {} (scripts/test installs it)",
            bin.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let user = rustix::process::geteuid().is_root().then(|| "postgres".to_owned());
        if let Some(user) = &user {
            let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
            let f: Vec<&str> = passwd
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f[0] == user)
                .unwrap_or_else(|| panic!("no user {user} (the postgresql package makes it)"));
            let (uid, gid) = (f[2].parse().unwrap(), f[3].parse().unwrap());
            let (uid, gid) = (rustix::process::Uid::from_raw(uid), rustix::process::Gid::from_raw(gid));
            rustix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let pg = Postgres { bin, data: dir.path().join("data"), port, user, dir };
        pg.run("initdb", &["-D", pg.data.to_str().unwrap(), "-A", "trust", "-U", "pareco", "--no-sync"]);
        pg.launch(&pg.data, pg.port);
        pg
    }

    /// Starts a server on the data directory `data`, on `port`.
    pub fn launch(&self, data: &Path, port: u16) {
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off",
            self.dir.path().display()
        );
        let log = self.dir.path().join(format!("postgres-{port}.log"));
        self.run("pg_ctl", &["-D", data.to_str().unwrap(), "-o", &options, "-l", log.to_str().unwrap(), "-w", "start"]);
    }

    /// psql's unaligned output of `sql` on `port`.
    pub fn psql(&self, port: u16, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "pareco",
                "-d",
                "postgres",
                "-At",
                "-c",
                sql,
            ])
            .env("PGCONNECT_TIMEOUT", "20")
            .output()
            .unwrap();
        assert!(out.status.success(), "psql failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        let mut c = match &self.user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        };
        c.current_dir("/");
        c
    }

    #[track_caller]
    pub fn run(&self, program: &str, args: &[&str]) {
        let out = self.command(program).args(args).output().unwrap();
        assert!(out.status.success(), "{program} failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// pgbench, a client: run as ourselves (not through runuser), so that
    /// killing it stops the load.
    pub fn pgbench(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.bin.join("pgbench"));
        c.args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "pareco"]).args(args).arg("postgres");
        c
    }

    pub fn stop(&self) {
        self.run("pg_ctl", &["-D", self.data.to_str().unwrap(), "-m", "fast", "-w", "stop"]);
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.command("pg_ctl").args(["-D", self.data.to_str().unwrap(), "-m", "immediate", "stop"]).output();
    }
}
