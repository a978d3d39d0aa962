//! Signed manifests and alias records, with keys made by openssl, on a local registry.

use std::path::{Path, PathBuf};

use super::*;
use crate::spec::Task;

fn openssl(args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl makes the test's keys");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private key and its public key, as PEM files in `dir`.
fn keypair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    openssl(&[
        "genpkey",
        "-algorithm",
        "ed25519",
        "-out",
        private.to_str().unwrap(),
    ]);
    openssl(&[
        "pkey",
        "-in",
        private.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    (private, public)
}

fn recipe(name: &str) -> RecipeModel {
    RecipeModel {
        name: name.into(),
        task: Task::Forecast,
        kind: "forecast".into(),
        recipe: serde_json::json!({"k": 1}),
        algorithm: "test".into(),
        calibration: None,
        series: "api/requests".into(),
        query: None,
        points: 10,
        holdout_points: 0,
        content_sha256: "0".repeat(64),
        time_range: ("a".into(), "b".into()),
        metrics: BTreeMap::new(),
        gate: Vec::new(),
        fit_seconds: 0.0,
    }
}

#[tokio::test]
async fn a_verifying_registry_refuses_unsigned_and_mis_signed_versions_and_aliases() {
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = keypair(keys.path(), "trainer");
    let (other, _) = keypair(keys.path(), "intruder");
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().display().to_string();
    let open = |signing: Signing| Registry::open(&url, &[]).unwrap().with_signing(signing);
    let signer = open(Signing::from_files(Some(&private), None).unwrap());
    let verifier = open(Signing::from_files(None, Some(&public)).unwrap());
    let unsigned = open(Signing::default());
    let intruder = open(Signing::from_files(Some(&other), None).unwrap());

    // signed: loads by number and through an alias
    signer.register_recipe_model(recipe("load")).await.unwrap();
    signer
        .move_alias("load", "champion", "1", None, "test", "promote")
        .await
        .unwrap();
    verifier.load("load", "1").await.unwrap();
    verifier.load_resolved("load", "champion").await.unwrap();

    // written without a key: refused by number
    unsigned
        .register_recipe_model(recipe("load"))
        .await
        .unwrap();
    let e = verifier.load("load", "2").await.unwrap_err().to_string();
    assert!(e.contains("not signed"), "{e}");
    // written with another key: refused
    intruder
        .register_recipe_model(recipe("load"))
        .await
        .unwrap();
    let e = verifier.load("load", "3").await.unwrap_err().to_string();
    assert!(e.contains("does not verify"), "{e}");
    // an alias record moved without the key: refused, as is a record signed by another
    unsigned
        .move_alias("load", "champion", "1", None, "test", "rollback")
        .await
        .unwrap();
    let e = verifier
        .load_resolved("load", "champion")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not signed"), "{e}");
    // the manifest edited after signing: its signature no longer matches its content
    let m = dir.path().join("load/1/manifest.json");
    let edited = std::fs::read_to_string(&m)
        .unwrap()
        .replace("\"algorithm\": \"test\"", "\"algorithm\": \"evil\"");
    std::fs::write(&m, edited).unwrap();
    let e = verifier.load("load", "1").await.unwrap_err().to_string();
    assert!(e.contains("not signed"), "{e}");
    // without a public key nothing is checked (and the registry says so)
    assert!(!unsigned.signing.verifies());
    unsigned.load("load", "2").await.unwrap();

    // keys that are not a pair are a settings error
    let e = Signing::from_files(Some(&private), Some(&keys.path().join("intruder.pub.pem")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a key pair"), "{e}");
    let e = Signing::from_files(Some(&public), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("private key"), "{e}");
}
