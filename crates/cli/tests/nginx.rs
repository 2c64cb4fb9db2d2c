//! README's nginx recipe, run: nginx serves TLS from a file the agent keeps current
//! (`[[agent.file]]` holding a certificate-and-key secret, Key Vault's PEM form of a
//! certificate, with `command = ["nginx", ..., "-s", "reload"]`). A rotation in the primary
//! (its event posted) reaches nginx: a client that trusts only the new certificate's CA is
//! served after the rotation, one that trusts only the old one's before.
//!
//! Needs nginx: `.ci/run` installs Debian's `nginx-light`; without it, this test installs it
//! the same way when it runs as root, and otherwise fails saying so.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{post_event, write_private, TOKEN};

/// Where nginx is, installed if need be (as `.ci/run` does).
fn nginx() -> PathBuf {
    let find = || {
        ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
    };
    if let Some(p) = find() {
        return p;
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    if root {
        let _ = Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "nginx-light",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status();
    }
    find().expect("nginx is needed: apt-get install nginx-light (.ci/run does)")
}

/// A CA and, signed by it, a certificate for localhost and 127.0.0.1: the CA's PEM, and the
/// leaf's certificate and key in one PEM (the form Key Vault gives a certificate's secret).
fn certificate(name: &str) -> (String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, format!("test CA {name}"));
    let ca_cert = ca.clone().self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, name);
    let leaf = leaf.signed_by(&leaf_key, &Issuer::new(ca, ca_key)).unwrap();
    (
        ca_cert.pem(),
        format!("{}{}", leaf.pem(), leaf_key.serialize_pem()),
    )
}

struct Nginx {
    bin: PathBuf,
    dir: PathBuf,
}

impl Nginx {
    fn args(&self) -> [String; 4] {
        [
            "-p".into(),
            self.dir.display().to_string(),
            "-c".into(),
            self.dir.join("nginx.conf").display().to_string(),
        ]
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new(&self.bin)
            .args(self.args())
            .args(["-s", "stop"])
            .stderr(Stdio::null())
            .status();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether a client trusting only `ca` gets nginx's answer.
async fn served(port: u16, ca: &str) -> bool {
    let c = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.as_bytes()).unwrap()])
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    match c.get(format!("https://localhost:{port}/")).send().await {
        Ok(r) => r.status().as_u16() == 200 && r.text().await.unwrap_or_default() == "served",
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_serves_the_rotated_certificate_after_its_reload() {
    let bin = nginx();
    let dir = common::temp_dir("nginx");
    for d in ["tls", "logs", "tmp"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    let (ca1, bundle1) = certificate("v1");
    let (ca2, bundle2) = certificate("v2");
    let emu = common::emulator(&dir, &[("site-tls", &bundle1)]).await;
    let port = free_port();
    let pem = dir.join("tls/site.pem");
    let d = dir.display();
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "daemon on;\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log;\nworker_processes 1;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n\
               fastcgi_temp_path {d}/tmp/fastcgi;\n  uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n\
               server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {p};\n    ssl_certificate_key {p};\n\
                 location / {{ return 200 \"served\"; }}\n  }}\n}}\n",
            p = pem.display()
        ),
    )
    .unwrap();
    let ng = Nginx {
        bin: bin.clone(),
        dir: dir.clone(),
    };
    // The agent writes the file at its start; nginx starts on it.
    let client = std::fs::read_to_string(emu.write_client_config().unwrap())
        .unwrap()
        .replace("notify_max_delay = \"30s\"", "notify_max_delay = \"50ms\"");
    write_private(&dir.join("agent.token"), TOKEN);
    let args = ng.args();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "{client}\n[agent]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"agent.token\"\n\
             file_dirs = [\"tls\"]\nfile_check = \"20ms\"\n\
             [[agent.file]]\npath = \"tls/site.pem\"\nsecret = \"site-tls\"\n\
             command = [\"{bin}\", \"{}\", \"{}\", \"{}\", \"{}\", \"-s\", \"reload\"]\n",
            args[0],
            args[1],
            args[2],
            args[3],
            bin = bin.display()
        ),
    )
    .unwrap();
    let agent = common::agent(&config, None).await;
    assert_eq!(std::fs::read_to_string(&pem).unwrap(), bundle1);
    let started = Command::new(&bin).args(ng.args()).status().unwrap();
    assert!(started.success(), "nginx starts on the agent's file");
    assert!(
        served(port, &ca1).await,
        "nginx serves the first certificate"
    );
    assert!(!served(port, &ca2).await);

    // The rotation: a new version in the primary, its event posted to the agent.
    emu.insert("weu", "site-tls", &bundle2);
    post_event(&agent.base, "site-tls").await;
    let rotated = Instant::now();
    let end = rotated + Duration::from_secs(30);
    while !served(port, &ca2).await {
        assert!(
            Instant::now() < end,
            "nginx never served the rotated certificate"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("rotation to nginx serving it: {:?}", rotated.elapsed());
    assert_eq!(std::fs::read_to_string(&pem).unwrap(), bundle2);
    // The old workers finish what they hold, then the old certificate is gone.
    while served(port, &ca1).await {
        assert!(
            Instant::now() < end,
            "nginx still serves the old certificate"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(agent);
    drop(ng);
    let _ = std::fs::remove_dir_all(&dir);
}
