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

/// The audit rows as JSON, read with psql.
fn audit_rows(db: &Db) -> Vec<serde_json::Value> {
    let text = (db.exec)(
        "SELECT json_agg(t ORDER BY seq) FROM (SELECT seq, at, actor, role, action, target, \
         outcome, detail, prev_hash, hash FROM _ymera_audit) t",
    );
    serde_json::from_str(&text).unwrap()
}

/// What someone with write access to the database but not the key can do: rewrite rows
/// from `from` on with `detail` changed and every hash recomputed in the public, plain
/// form.
fn rewrite_from(db: &Db, from: i64) {
    let rows = audit_rows(db);
    let mut prev = rows
        .iter()
        .find(|r| r["seq"] == from - 1)
        .map_or(ymera_warehouse::GENESIS_HASH.to_string(), |r| {
            r["hash"].as_str().unwrap().to_string()
        });
    for r in rows.iter().filter(|r| r["seq"].as_i64().unwrap() >= from) {
        let s = |k: &str| r[k].as_str().unwrap().to_string();
        let entry = ymera_warehouse::AuditEntry {
            actor: s("actor"),
            role: s("role"),
            action: s("action"),
            target: s("target"),
            outcome: s("outcome"),
            detail: r"{}".to_string(),
        };
        let seq = r["seq"].as_i64().unwrap();
        let hash = ymera_warehouse::audit_hash(&prev, seq, &s("at"), &entry);
        (db.exec)(&format!(
            "UPDATE _ymera_audit SET detail = '{{}}', prev_hash = '{prev}', hash = '{hash}' WHERE seq = {seq}"
        ));
        prev = hash;
    }
}

#[test]
fn a_signed_audit_log_detects_a_rewrite_through_psql() {
    let db = postgres_db();
    let cwd = tempfile::tempdir().unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let key_file = secrets.path().join("audit.key");
    std::fs::write(&key_file, "0f".repeat(32)).unwrap();
    let run = |args: &[&str], key: bool| {
        let mut c = ymera();
        c.args(args)
            .current_dir(cwd.path())
            .env("YMERA__WAREHOUSE__URL", &db.url)
            .env("YMERA__LAKE__URL", cwd.path().join("lake"))
            .env("YMERA__LOG__LEVEL", "warn");
        if key {
            c.env("YMERA__AUDIT__HMAC_KEY_FILE", &key_file);
        }
        c.output().unwrap()
    };
    for role in ["analyst", "agent", "admin", "analyst"] {
        let out = run(&["keys", "create", "--role", role], true);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let rows = audit_rows(&db);
    assert_eq!(rows.len(), 4);
    assert!(
        rows.iter()
            .all(|r| r["hash"].as_str().unwrap().starts_with("hmac-sha256:")),
        "{rows:?}"
    );
    let out = run(&["audit", "verify"], true);
    let said = text(&out.stdout);
    assert!(out.status.success(), "{said}{}", text(&out.stderr));
    assert!(said.contains("4 signed"), "{said}");
    let anchor = said
        .lines()
        .find_map(|l| l.strip_prefix("anchor: "))
        .unwrap_or_else(|| panic!("no anchor: {said}"))
        .to_string();
    // without the key, signed rows cannot be vouched for
    let out = run(&["audit", "verify"], false);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("cannot be checked without the key"));

    // rows 3.. rewritten with plain hashes that chain correctly
    rewrite_from(&db, 3);
    let out = run(&["audit", "verify"], true);
    let said = text(&out.stdout);
    eprintln!(
        "figure: rewrite from seq 3 through psql -> exit {:?}: {said}",
        out.status.code()
    );
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("tampered at seq 3") && said.contains("unsigned"),
        "{said}"
    );
    // every row rewritten: nothing is signed any more
    rewrite_from(&db, 1);
    let out = run(&["audit", "verify"], true);
    let said = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("no row is signed"), "{said}");
    // the anchor kept off the host still names the rewrite
    let out = run(&["audit", "verify", "--anchor", &anchor], false);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("rewritten"),
        "{}",
        text(&out.stdout)
    );
    // and a truncated tail
    (db.exec)("DELETE FROM _ymera_audit WHERE seq = 4");
    let out = run(&["audit", "verify", "--anchor", &anchor], false);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("truncated"),
        "{}",
        text(&out.stdout)
    );

    // a key kept under the lake is refused
    std::fs::create_dir_all(cwd.path().join("lake")).unwrap();
    let inside = cwd.path().join("lake/audit.key");
    std::fs::write(&inside, "0f".repeat(32)).unwrap();
    let out = ymera()
        .args(["audit", "verify"])
        .current_dir(cwd.path())
        .env("YMERA__WAREHOUSE__URL", &db.url)
        .env("YMERA__LAKE__URL", cwd.path().join("lake"))
        .env("YMERA__AUDIT__HMAC_KEY_FILE", &inside)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("under the lake"),
        "{}",
        text(&out.stderr)
    );
}
