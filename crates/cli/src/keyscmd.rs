//! `ymera keys create|list|revoke` and `ymera audit verify`, and what `ymera serve` builds
//! from the `auth.*` and `serve.*` settings: [`build_auth`] (the admin key bootstrap
//! included) and [`serve_limits`]. Keys and the audit log live in `warehouse.url`.

use ymera_serve::auth::{
    Auth, AuthConfig, JwtConfig, Role, ServeLimits, bootstrap_admin_key, check_cors_origins,
};
use ymera_warehouse::{AuditEntry, AuditKey, Warehouse};

use crate::settings::Settings;
use crate::{EXIT_FAILURE, EXIT_OK};

async fn open(settings: &Settings) -> Result<Warehouse, u8> {
    audit_warehouse(settings).await.map_err(|e| {
        eprintln!("error: {e}");
        EXIT_FAILURE
    })
}

/// The warehouse, with the audit key of `audit.hmac_key_file` when one is set: what
/// every command that writes or checks audit rows connects with.
pub async fn audit_warehouse(settings: &Settings) -> Result<Warehouse, String> {
    let key = audit_key(settings)?;
    let wh = Warehouse::connect(settings.warehouse.url.expose())
        .await
        .map_err(|e| e.to_string())?;
    Ok(match key {
        Some(k) => wh.with_audit_key(k),
        None => wh,
    })
}

/// Reads `audit.hmac_key_file`, refusing one kept under the lake or beside a SQLite
/// warehouse (whoever can rewrite those could then rewrite the log too).
fn audit_key(settings: &Settings) -> Result<Option<AuditKey>, String> {
    let Some(path) = &settings.audit.hmac_key_file else {
        return Ok(None);
    };
    let shown = path.display();
    let bytes = std::fs::read(path).map_err(|e| format!("audit.hmac_key_file {shown}: {e}"))?;
    let file =
        std::fs::canonicalize(path).map_err(|e| format!("audit.hmac_key_file {shown}: {e}"))?;
    let mut near = Vec::new();
    if let Ok(lake) = ymera_lake::Lake::open(&settings.lake.url)
        && let Some(root) = lake.local_root()
        && let Ok(root) = std::fs::canonicalize(root)
    {
        near.push(("the lake", root));
    }
    if let Some(db) = settings.warehouse.url.expose().strip_prefix("sqlite://")
        && let Some(dir) = std::path::Path::new(db.split('?').next().unwrap_or(db)).parent()
        && let Ok(dir) = std::fs::canonicalize(if dir.as_os_str().is_empty() {
            std::path::Path::new(".")
        } else {
            dir
        })
    {
        near.push(("the SQLite warehouse's directory", dir));
    }
    if let Some((what, root)) = near.iter().find(|(_, root)| file.starts_with(root)) {
        return Err(format!(
            "audit.hmac_key_file {shown} is under {what} ({}): keep the key where the data's writers cannot read it (a mounted Secret)",
            root.display()
        ));
    }
    AuditKey::from_file_contents(&bytes)
        .map(Some)
        .map_err(|e| format!("audit.hmac_key_file {shown}: {e}"))
}

/// Appends a CLI action to the audit log; a failure is reported, not fatal (the action
/// is done).
pub(crate) async fn audit(
    wh: &Warehouse,
    action: &str,
    target: &str,
    outcome: &str,
    detail: serde_json::Value,
) {
    let entry = AuditEntry {
        actor: "cli".into(),
        role: String::new(),
        action: action.into(),
        target: target.into(),
        outcome: outcome.into(),
        detail: detail.to_string(),
    };
    if let Err(e) = wh.audit_append(&entry).await {
        eprintln!("warning: could not write the audit log: {e}");
    }
}

/// `ymera keys create --role R [--name N]`: the key on stdout, once.
pub async fn create(settings: &Settings, role: Role, name: Option<String>) -> u8 {
    match create_key(settings, role, &name.unwrap_or_default()).await {
        Ok((id, key, shown)) => {
            println!("{key}");
            eprintln!(
                "created key {id} (role {role}) in {shown}; this is the only time the key is shown: only its hash is stored"
            );
            EXIT_OK
        }
        Err(code) => code,
    }
}

/// Creates a key and writes its `keys.create` audit row; (id, key, the warehouse as shown).
/// Errors are printed and given as the exit code.
pub async fn create_key(
    settings: &Settings,
    role: Role,
    name: &str,
) -> Result<(String, String, String), u8> {
    let wh = open(settings).await?;
    let (id, key) = wh.create_key(role.as_str(), name).await.map_err(|e| {
        eprintln!("error: {e}");
        EXIT_FAILURE
    })?;
    audit(
        &wh,
        "keys.create",
        &id,
        "ok",
        serde_json::json!({"role": role, "name": name}),
    )
    .await;
    let shown = wh.url().to_string();
    wh.close().await;
    Ok((id, key, shown))
}

/// `ymera keys list`: id, role, name, created, revoked (never a key or a hash).
pub async fn list(settings: &Settings) -> u8 {
    let wh = match open(settings).await {
        Ok(w) => w,
        Err(code) => return code,
    };
    let keys = match wh.list_keys().await {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILURE;
        }
    };
    let rows: Vec<[String; 5]> = keys
        .into_iter()
        .map(|k| {
            [
                k.id,
                k.role,
                k.name,
                k.created_at,
                k.revoked_at.unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let header = ["ID", "ROLE", "NAME", "CREATED", "REVOKED"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    for r in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    if rows.is_empty() {
        eprintln!("no keys in {} (`ymera keys create --role admin`)", wh.url());
    }
    wh.close().await;
    EXIT_OK
}

/// `ymera keys revoke ID`.
pub async fn revoke(settings: &Settings, id: &str) -> u8 {
    let wh = match open(settings).await {
        Ok(w) => w,
        Err(code) => return code,
    };
    let code = match wh.revoke_key(id).await {
        Ok(true) => {
            audit(&wh, "keys.revoke", id, "ok", serde_json::json!({})).await;
            println!(
                "revoked key {id}; a server that used it in the last {}s may accept it until then",
                ymera_serve::auth::KEY_CACHE_TTL.as_secs()
            );
            EXIT_OK
        }
        Ok(false) => {
            audit(&wh, "keys.revoke", id, "not_found", serde_json::json!({})).await;
            eprintln!("error: no active key `{id}` (see `ymera keys list`)");
            EXIT_FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_FAILURE
        }
    };
    wh.close().await;
    code
}

/// `ymera audit verify [--anchor SEQ:HASH]`: exit 0 when the chain is intact (every signed
/// row checked with the key, the anchor found), 1 naming what is not.
pub async fn audit_verify(settings: &Settings, anchor: Option<&str>) -> u8 {
    let anchor = match anchor.map(|a| {
        a.split_once(':')
            .and_then(|(seq, hash)| Some((seq.parse::<i64>().ok()?, hash.to_string())))
            .ok_or_else(|| {
                format!("--anchor `{a}` is not SEQ:HASH as printed by `ymera audit verify`")
            })
    }) {
        None => None,
        Some(Ok(a)) => Some(a),
        Some(Err(e)) => {
            eprintln!("error: {e}");
            return crate::EXIT_USAGE;
        }
    };
    let wh = match open(settings).await {
        Ok(w) => w,
        Err(code) => return code,
    };
    let report = match wh.audit_verify().await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILURE;
        }
    };
    let anchored = match &anchor {
        Some((seq, _)) => match wh.audit_rows(seq - 1, 1).await {
            Ok(rows) => Some(rows.into_iter().next().filter(|r| r.seq == *seq)),
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_FAILURE;
            }
        },
        None => None,
    };
    wh.close().await;
    let keyed = settings.audit.hmac_key_file.is_some();
    println!(
        "{} audit rows checked ({} signed{})",
        report.rows,
        report.signed,
        if keyed {
            ", HMACs checked with audit.hmac_key_file"
        } else {
            ""
        }
    );
    if let Some((seq, why)) = report.first_bad {
        println!("audit log tampered at seq {seq}: {why}");
        return EXIT_FAILURE;
    }
    if report.unchecked > 0 {
        println!(
            "audit log not verified: {} signed rows cannot be checked without the key (set audit.hmac_key_file)",
            report.unchecked
        );
        return EXIT_FAILURE;
    }
    if keyed && report.rows > 0 && report.signed == 0 {
        println!(
            "audit log not verified: no row is signed with audit.hmac_key_file (written before the key was set, or rewritten without it)"
        );
        return EXIT_FAILURE;
    }
    if let (Some((seq, hash)), Some(found)) = (&anchor, anchored) {
        match found {
            Some(row) if &row.hash == hash => {}
            Some(row) => {
                println!(
                    "audit log rewritten: seq {seq} has hash {}, the anchor says {hash}",
                    row.hash
                );
                return EXIT_FAILURE;
            }
            None => {
                println!("audit log truncated: seq {seq} of the anchor is gone");
                return EXIT_FAILURE;
            }
        }
    }
    match report.last {
        Some((seq, hash)) => {
            println!("audit log intact (last seq {seq}, hash {hash})");
            println!("anchor: {seq}:{hash}");
        }
        None => println!("audit log intact (empty)"),
    }
    EXIT_OK
}

/// The security of `ymera serve` from the settings. When no JWT is configured and the
/// warehouse holds no key at all, an admin key is created first and written to
/// `auth.admin_key_file` (mode 0600; the log names the file, never the key).
pub async fn build_auth(settings: &Settings, warehouse: Warehouse) -> Result<Auth, String> {
    let a = &settings.auth;
    let jwt = match (&a.jwt.public_key_file, &a.jwt.issuer, &a.jwt.audience) {
        (None, None, None) => None,
        (Some(file), Some(issuer), Some(audience)) => Some(JwtConfig {
            public_key_file: file.clone(),
            issuer: issuer.clone(),
            audience: audience.clone(),
        }),
        _ => {
            return Err(
                "settings: auth.jwt needs public_key_file, issuer and audience together".into(),
            );
        }
    };
    check_cors_origins(&settings.serve.cors_allowed_origins)
        .map_err(|e| format!("settings: {e}"))?;
    if jwt.is_none() {
        bootstrap_admin_key(&warehouse, &a.admin_key_file)
            .await
            .map_err(|e| e.to_string())?;
    }
    let config = AuthConfig {
        jwt,
        rate_per_second: a.rate_limit.per_second,
        burst: a.rate_limit.burst,
    };
    Auth::new(config, warehouse).map_err(|e| e.to_string())
}

/// `serve.body_limit`, `serve.request_timeout`, `serve.cors_allowed_origins`.
pub fn serve_limits(settings: &Settings) -> ServeLimits {
    ServeLimits {
        body_limit_bytes: usize::try_from(settings.serve.body_limit.0).unwrap_or(usize::MAX),
        request_timeout: settings.serve.request_timeout,
        cors_allowed_origins: settings.serve.cors_allowed_origins.clone(),
    }
}
