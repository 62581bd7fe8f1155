//! `postern audit verify|export|checkpoint` and `postern openapi`: the evidence chain, read
//! straight from the control plane's database (the verifier needs every workspace's entries,
//! and should not have to trust the gateway that wrote them).

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use postern_control::audit;
use postern_sdk::Identity;

/// `postern audit …`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the whole chain and every checkpoint; exit 1 naming the first altered, removed
    /// or reordered entry, or a cut tail.
    Verify(Source),
    /// Write every entry as one JSON line (RFC 8785 canonical) to standard output.
    Export {
        #[command(flatten)]
        source: Source,
    },
}

/// Where the log is and whose checkpoints to trust.
#[derive(Debug, Args)]
pub struct Source {
    /// `sqlite:///path/control.db` or `postgres://…` (`[control] database_url`).
    #[arg(long, env = "POSTERN_DATABASE_URL")]
    pub database: String,
    /// The control plane's public key (base64 Ed25519, as `postern pubkey` prints it).
    #[arg(long, conflicts_with = "signer_key")]
    pub public_key: Option<String>,
    /// Or the control plane's key file itself (its public half is used).
    #[arg(long)]
    pub signer_key: Option<PathBuf>,
}

pub async fn run(cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Verify(source) => {
            let trusted = trusted_key(&source)?;
            let store = postern_control::store::open(&source.database)
                .await
                .context("opening the database")?;
            match audit::verify(&*store, &trusted).await {
                Ok(report) => {
                    let last = report.last.map_or_else(
                        || "empty".to_owned(),
                        |(seq, hash)| format!("last entry {seq} {hash}"),
                    );
                    println!(
                        "audit log intact: {} entries, {} checkpoints, {last}",
                        report.entries, report.checkpoints
                    );
                    Ok(())
                }
                Err(audit::VerifyError::Broken(b)) => {
                    println!("audit log BROKEN: {b}");
                    std::process::exit(1);
                }
                Err(e) => Err(e).context("reading the audit log"),
            }
        }
        AuditCommand::Export { source } => {
            let store = postern_control::store::open(&source.database)
                .await
                .context("opening the database")?;
            let mut out = std::io::BufWriter::new(std::io::stdout());
            let n = audit::export(&*store, &mut out).await?;
            std::io::Write::flush(&mut out)?;
            eprintln!("exported {n} entries");
            Ok(())
        }
    }
}

fn trusted_key(source: &Source) -> anyhow::Result<ed25519_dalek::VerifyingKey> {
    match (&source.public_key, &source.signer_key) {
        (Some(text), None) => Ok(postern_sdk::identity::parse_verifying_key(text)?),
        (None, Some(path)) => Ok(Identity::load(path)?.verifying_key()),
        _ => bail!("give --public-key or --signer-key"),
    }
}
