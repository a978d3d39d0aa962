//! `ymera keys create|list|revoke` and `ymera audit verify` through the binary, on a
//! SQLite file and on the real PostgreSQL (a schema of its own): a key is printed once and
//! never listed, revocation works once, key actions are audited, and a row edited behind
//! ymera's back is named by `audit verify` (exit 1). The database is read and tampered
//! with by python3's sqlite3 module and psql, not through ymera's code.

use std::path::Path;
use std::process::{Command, Output};

use crate::support::*;

/// One warehouse under test: its URL, and a way to run SQL on it outside ymera.
struct Db {
    url: String,
    exec: Box<dyn Fn(&str) -> String>,
    _dir: tempfile::TempDir,
}

fn sqlite_db() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("warehouse.db");
    let url = format!("sqlite://{}", file.display());
    Db {
        url,
        exec: Box::new(move |sql| {
            const SCRIPT: &str = "import json, sqlite3, sys\n\
                c = sqlite3.connect(sys.argv[1])\n\
                rows = c.execute(sys.argv[2]).fetchall()\n\
                c.commit()\n\
                print(json.dumps(rows))\n";
            let out = Command::new("python3")
                .args(["-c", SCRIPT])
                .arg(&file)
                .arg(sql)
                .output()
                .expect("python3");
            assert!(
                out.status.success(),
                "{sql}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        }),
        _dir: dir,
    }
}

fn postgres_db() -> Db {
    let base = std::env::var("YMERA_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("ymera_keys_{}", std::process::id());
    let psql = {
        let base = base.clone();
        let schema = schema.clone();
        move |sql: &str| {
            let out = Command::new("psql")
                .arg(&base)
                .args(["-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
                .env("PGOPTIONS", format!("-c search_path={schema}"))
                .output()
                .expect("psql (PostgreSQL's client) is needed by this test");
            assert!(
                out.status.success(),
                "{sql}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        }
    };
    psql(&format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
    ));
    let sep = if base.contains('?') { '&' } else { '?' };
    Db {
        url: format!("{base}{sep}options=-c%20search_path%3D{schema}"),
        exec: Box::new(psql),
        _dir: tempfile::tempdir().unwrap(),
    }
}

fn ymera_on(db: &Db, cwd: &Path, args: &[&str]) -> Output {
    ymera()
        .args(args)
        .current_dir(cwd)
        .env("YMERA__WAREHOUSE__URL", &db.url)
        .env("YMERA__LOG__LEVEL", "warn")
        .output()
        .expect("run ymera")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn keys_and_audit(db: Db) {
    let cwd = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| ymera_on(&db, cwd.path(), args);

    // create: the key on stdout, once; a note on stderr
    let out = run(&[
        "keys",
        "create",
        "--role",
        "analyst",
        "--name",
        "e2e-notebook",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let key = text(&out.stdout).trim().to_string();
    assert!(
        key.starts_with("ymk_") && key.len() == 4 + 12 + 1 + 64,
        "{key}"
    );
    assert_eq!(text(&out.stdout).lines().count(), 1);
    assert!(
        text(&out.stderr).contains("only its hash is stored"),
        "{}",
        text(&out.stderr)
    );
    let id = key[4..16].to_string();
    let secret = &key[17..];

    // list: the key's row, never the key or its hash
    let stored = (db.exec)(&format!(
        "SELECT hash FROM _ymera_api_keys WHERE id = '{id}'"
    ));
    let hash: String = stored.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    assert_eq!(hash.len(), 64, "{stored}");
    let out = run(&["keys", "list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed = text(&out.stdout);
    let row = listed
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(
        row.contains("analyst") && row.contains("e2e-notebook"),
        "{row}"
    );
    assert!(row.trim_end().ends_with('-'), "not revoked yet: {row}");
    assert!(!listed.contains(secret), "the key is listed: {listed}");
    assert!(!listed.contains(&hash), "a hash is listed: {listed}");

    // a role that does not exist is a usage error
    let out = run(&["keys", "create", "--role", "root"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    // revoke: once
    let out = run(&["keys", "revoke", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(&["keys", "revoke", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no active key"),
        "{}",
        text(&out.stderr)
    );
    let listed = text(&run(&["keys", "list"]).stdout);
    let row = listed.lines().find(|l| l.starts_with(&id)).unwrap();
    assert!(
        !row.trim_end().ends_with('-'),
        "revoked time missing: {row}"
    );

    // two more keys: five audited actions (create, revoke, failed revoke, create, create)
    for role in ["agent", "admin"] {
        assert!(run(&["keys", "create", "--role", role]).status.success());
    }
    let actions =
        (db.exec)("SELECT seq, actor, action, target, outcome FROM _ymera_audit ORDER BY seq");
    for want in ["keys.create", "keys.revoke", "not_found", "cli", &id] {
        assert!(actions.contains(want), "{want} not audited: {actions}");
    }
    let out = run(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let said = text(&out.stdout);
    assert!(
        said.contains("5 audit rows checked") && said.contains("audit log intact"),
        "{said}"
    );

    // edit row 2 behind ymera's back
    (db.exec)("UPDATE _ymera_audit SET outcome = 'not_found' WHERE seq = 2");
    let out = run(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let said = text(&out.stdout);
    assert!(said.contains("tampered at seq 2"), "{said}");
    assert!(said.contains("edited"), "{said}");
}

#[test]
fn keys_and_audit_verify_on_sqlite() {
    keys_and_audit(sqlite_db());
}

#[test]
fn keys_and_audit_verify_on_postgres() {
    keys_and_audit(postgres_db());
}
