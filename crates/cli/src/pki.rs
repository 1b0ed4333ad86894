//! `fleet-health pki`: a small CA in a folder, for small fleets and tests.
//!
//! `pki init DIR` writes the CA (`ca.pem`, `ca.key`), a server certificate
//! (`server.pem`, `server.key`) for the names given, an empty CRL
//! (`crl.pem`) and the trust domain (`trust-domain`). `pki issue` signs
//! client certificates with it: `agent-ID.pem` for an agent,
//! `ROLE-NAME.pem` for an operator or a program. `pki revoke CERT` adds a
//! certificate to `crl.pem`, which a server started with `--crl` picks up
//! within a second. Keys are written with mode 0600; nothing is overwritten
//! without `--force`.

use std::path::{Path, PathBuf};

use fleet_health_auth::pki::{Ca, Issued, Validity};
use fleet_health_auth::{AgentPattern, Role, SpiffeId, TrustDomain};
use fleet_health_types::AgentId;

/// What `pki` was asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PkiTask {
    /// Make a CA and a server certificate in `dir`.
    Init {
        /// The folder.
        dir: PathBuf,
        /// The server's names (DNS names, IP addresses).
        sans: Vec<String>,
        /// The trust domain of the SPIFFE IDs.
        trust_domain: TrustDomain,
        /// Days the certificates are valid.
        days: u64,
        /// Overwrite what is there.
        force: bool,
    },
    /// Sign a client certificate with the CA in `dir`.
    Issue {
        /// The folder.
        dir: PathBuf,
        /// For whom.
        subject: Subject,
        /// Days it is valid.
        days: u64,
        /// Overwrite what is there.
        force: bool,
    },
    /// Revoke a certificate signed by the CA in `dir`.
    Revoke {
        /// The folder.
        dir: PathBuf,
        /// The certificate (PEM).
        cert: PathBuf,
    },
}

/// Whose certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    /// An agent.
    Agent(AgentId),
    /// An operator or a program with a role (a relay with its patterns).
    Holder {
        /// The name.
        name: String,
        /// The role.
        role: Role,
        /// A relay's agent patterns.
        agents: Vec<AgentPattern>,
    },
}

/// Carries out `task`; returns what to print.
pub fn run(task: &PkiTask) -> Result<String, String> {
    match task {
        PkiTask::Init {
            dir,
            sans,
            trust_domain,
            days,
            force,
        } => init(dir, sans, trust_domain, *days, *force),
        PkiTask::Issue {
            dir,
            subject,
            days,
            force,
        } => issue(dir, subject, *days, *force),
        PkiTask::Revoke { dir, cert } => revoke(dir, cert),
    }
}

fn init(
    dir: &Path,
    sans: &[String],
    td: &TrustDomain,
    days: u64,
    force: bool,
) -> Result<String, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let files = [
        "ca.pem",
        "ca.key",
        "server.pem",
        "server.key",
        "crl.pem",
        "trust-domain",
    ];
    if !force {
        refuse_existing(dir, &files)?;
    }
    let ca = Ca::new(
        &format!("fleet-health CA ({td})"),
        Validity::days(days.max(1) * 5),
    )
    .map_err(|e| e.to_string())?;
    let server = ca
        .server(sans, Validity::days(days))
        .map_err(|e| e.to_string())?;
    let crl = ca.crl(&[], 1).map_err(|e| e.to_string())?;
    write(dir, "ca.pem", ca.cert_pem(), false)?;
    write(dir, "ca.key", ca.key_pem(), true)?;
    write(dir, "server.pem", &server.cert_pem, false)?;
    write(dir, "server.key", &server.key_pem, true)?;
    write(dir, "crl.pem", &crl, false)?;
    write(dir, "trust-domain", &format!("{td}\n"), false)?;
    let _ = std::fs::remove_file(dir.join("revoked"));
    let d = dir.display();
    Ok(format!(
        "wrote {d}/ca.pem, ca.key (keep it safe), server.pem, server.key (for {}), crl.pem; trust domain {td}\n\
         next: fleet-health-server --listen 0.0.0.0:50051 --tls-cert {d}/server.pem --tls-key {d}/server.key --client-ca {d}/ca.pem --crl {d}/crl.pem --trust-domain {td}\n\
         then: fleet-health pki issue agent AGENT-ID --dir {d}\n",
        sans.join(", ")
    ))
}

fn issue(dir: &Path, subject: &Subject, days: u64, force: bool) -> Result<String, String> {
    let ca = load_ca(dir)?;
    let td = trust_domain(dir)?;
    let (stem, id, agents) = match subject {
        Subject::Agent(id) => (
            format!("agent-{}", file_safe(id.as_str())),
            SpiffeId::agent(td, id.clone()),
            Vec::new(),
        ),
        Subject::Holder { name, role, agents } => (
            format!("{role}-{}", file_safe(name)),
            SpiffeId::holder(td, *role, name).map_err(|e| e.to_string())?,
            agents.clone(),
        ),
    };
    let (cert, key) = (format!("{stem}.pem"), format!("{stem}.key"));
    if !force {
        refuse_existing(dir, &[&cert, &key])?;
    }
    let Issued {
        cert_pem, key_pem, ..
    } = ca
        .client(&id, &agents, Validity::days(days))
        .map_err(|e| e.to_string())?;
    write(dir, &cert, &cert_pem, false)?;
    write(dir, &key, &key_pem, true)?;
    let d = dir.display();
    Ok(format!(
        "wrote {d}/{cert} and {d}/{key} for {id}\n\
         use: fleet-health --server https://HOST:50051 --ca {d}/ca.pem --cert {d}/{cert} --key {d}/{key} ...\n"
    ))
}

fn revoke(dir: &Path, cert: &Path) -> Result<String, String> {
    let ca = load_ca(dir)?;
    let pem = std::fs::read(cert).map_err(|e| format!("{}: {e}", cert.display()))?;
    let (_, parsed) = x509_parser::pem::parse_x509_pem(&pem)
        .map_err(|e| format!("{}: not a PEM certificate: {e}", cert.display()))?;
    let x509 = parsed
        .parse_x509()
        .map_err(|e| format!("{}: not a certificate: {e}", cert.display()))?;
    let serial = x509.raw_serial().to_vec();
    let hex: String = serial.iter().map(|b| format!("{b:02x}")).collect();
    let list_path = dir.join("revoked");
    let mut revoked: Vec<String> = std::fs::read_to_string(&list_path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect();
    if !revoked.contains(&hex) {
        revoked.push(hex.clone());
    }
    let serials: Vec<Vec<u8>> = revoked.iter().map(|h| unhex(h)).collect::<Result<_, _>>()?;
    let crl = ca
        .crl(&serials, revoked.len() as u64 + 1)
        .map_err(|e| e.to_string())?;
    write(dir, "revoked", &(revoked.join("\n") + "\n"), false)?;
    // Replaced in one step: a server reading it never sees half a file.
    let tmp = dir.join("crl.pem.tmp");
    std::fs::write(&tmp, crl).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join("crl.pem")).map_err(|e| e.to_string())?;
    Ok(format!(
        "revoked {} (serial {hex}); {}/crl.pem now lists {} certificate(s): a server started with --crl {}/crl.pem ends its streams within a second\n",
        cert.display(),
        dir.display(),
        revoked.len(),
        dir.display()
    ))
}

fn load_ca(dir: &Path) -> Result<Ca, String> {
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name)).map_err(|e| {
            format!(
                "{}: {e} (make the CA first: fleet-health pki init {})",
                dir.join(name).display(),
                dir.display()
            )
        })
    };
    Ca::from_pem(&read("ca.pem")?, &read("ca.key")?)
        .map_err(|e| format!("the CA in {}: {e}", dir.display()))
}

fn trust_domain(dir: &Path) -> Result<TrustDomain, String> {
    let path = dir.join("trust-domain");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    TrustDomain::parse(text.trim()).map_err(|e| format!("{}: {e}", path.display()))
}

fn refuse_existing(dir: &Path, files: &[&str]) -> Result<(), String> {
    let there: Vec<&str> = files
        .iter()
        .copied()
        .filter(|f| dir.join(f).exists())
        .collect();
    if there.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} already holds {}; pass --force to replace",
            dir.display(),
            there.join(", ")
        ))
    }
}

fn write(dir: &Path, name: &str, text: &str, private: bool) -> Result<(), String> {
    let path = dir.join(name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    std::io::Write::write_all(&mut file, text.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// An ID as a file name: `/` and `:` become `_`.
fn file_safe(s: &str) -> String {
    s.replace(['/', ':'], "_")
}

fn unhex(h: &str) -> Result<Vec<u8>, String> {
    (0..h.len())
        .step_by(2)
        .map(|i| {
            h.get(i..i + 2)
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| format!("the revoked list holds a bad serial {h:?}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::FromDer;

    fn td() -> TrustDomain {
        TrustDomain::parse("fleet.test").unwrap()
    }

    fn pem_file(dir: &Path, name: &str) -> x509_parser::pem::Pem {
        let pem = std::fs::read(dir.join(name)).expect("written");
        x509_parser::pem::parse_x509_pem(&pem).expect("PEM").1
    }

    /// The certificate's subject alternative names, as `KIND VALUE`.
    fn sans(dir: &Path, name: &str) -> Vec<String> {
        use x509_parser::extensions::GeneralName;
        let pem = pem_file(dir, name);
        let cert = pem.parse_x509().expect("x509");
        let san = cert.subject_alternative_name().expect("ok").expect("SANs");
        san.value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::URI(u) => format!("URI {u}"),
                GeneralName::DNSName(d) => format!("DNS {d}"),
                GeneralName::IPAddress(ip) => match <[u8; 4]>::try_from(*ip) {
                    Ok(v4) => format!("IP {}", std::net::Ipv4Addr::from(v4)),
                    Err(_) => format!("IP {ip:?}"),
                },
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn init_issue_revoke_make_the_files_with_the_right_names() {
        let dir = tempfile::tempdir().expect("dir");
        let d = dir.path().to_path_buf();
        let init = PkiTask::Init {
            dir: d.clone(),
            sans: vec!["localhost".into(), "127.0.0.1".into()],
            trust_domain: td(),
            days: 30,
            force: false,
        };
        let said = run(&init).expect("init");
        assert!(said.contains("--tls-cert"), "{said}");
        let again = run(&init).unwrap_err();
        assert!(again.contains("--force"), "{again}");
        run(&PkiTask::Issue {
            dir: d.clone(),
            subject: Subject::Agent(AgentId::parse("site/web-1").unwrap()),
            days: 30,
            force: false,
        })
        .expect("issue agent");
        run(&PkiTask::Issue {
            dir: d.clone(),
            subject: Subject::Holder {
                name: "gw".into(),
                role: Role::Relay,
                agents: vec![AgentPattern::parse("site-a-*").unwrap()],
            },
            days: 30,
            force: false,
        })
        .expect("issue relay");
        assert_eq!(
            sans(&d, "agent-site_web-1.pem"),
            ["URI spiffe://fleet.test/agent/site/web-1"]
        );
        assert_eq!(
            sans(&d, "relay-gw.pem"),
            [
                "URI spiffe://fleet.test/relay/gw",
                "URI urn:fleet-health:agents:site-a-*"
            ]
        );
        assert_eq!(sans(&d, "server.pem"), ["DNS localhost", "IP 127.0.0.1"]);
        // Each is signed by the CA, and the CA by itself.
        let ca = pem_file(&d, "ca.pem");
        let ca = ca.parse_x509().expect("the CA");
        assert!(ca.is_ca());
        ca.verify_signature(None).expect("self-signed");
        for name in ["agent-site_web-1.pem", "relay-gw.pem", "server.pem"] {
            let pem = pem_file(&d, name);
            let cert = pem.parse_x509().expect("x509");
            assert_eq!(cert.issuer(), ca.subject(), "{name}");
            cert.verify_signature(Some(ca.public_key()))
                .unwrap_or_else(|e| panic!("{name} is not signed by the CA: {e}"));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for key in [
                "ca.key",
                "server.key",
                "agent-site_web-1.key",
                "relay-gw.key",
            ] {
                let mode = std::fs::metadata(d.join(key))
                    .expect("key")
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600, "{key}");
            }
        }
        let said = run(&PkiTask::Revoke {
            dir: d.clone(),
            cert: d.join("relay-gw.pem"),
        })
        .expect("revokes");
        assert!(said.contains("lists 1 certificate"), "{said}");
        let crl = std::fs::read(d.join("crl.pem")).expect("crl");
        let (_, p) = x509_parser::pem::parse_x509_pem(&crl).expect("pem");
        let (_, list) =
            x509_parser::revocation_list::CertificateRevocationList::from_der(&p.contents)
                .expect("a CRL");
        assert_eq!(list.iter_revoked_certificates().count(), 1);
    }
}
