//! `spansink spool`: inspect the poison spool. `list` and `show` open it
//! read-only, so they are safe next to a running instance and change nothing,
//! not even a damaged entry.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::blocking;
use crate::error::{Error, Result};
use crate::otlp::spansink::v1::{DeadLetter, Header};
use crate::poison::spool::{EntryInfo, Spool};

/// Payload bytes shown by `show`.
const PAYLOAD_PREVIEW: usize = 32;

#[derive(Debug, clap::Args)]
pub struct SpoolArgs {
    /// The spool directory. Accepted before or after the subcommand
    /// (`spansink spool drain --spool-dir DIR`).
    #[arg(
        long,
        global = true,
        env = "SPANSINK_SPOOL_DIR",
        default_value = "spool"
    )]
    pub spool_dir: PathBuf,
    #[command(subcommand)]
    pub command: SpoolCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum SpoolCommand {
    /// One line per entry, oldest first, then the totals.
    List,
    /// Every field of one entry.
    Show {
        /// The entry's id, as `list` prints it.
        id: String,
    },
    /// Publish the spooled dead letters to the dead-letter topic, and discard
    /// those that are not this spool's; refused while an instance uses the spool.
    Drain(DrainArgs),
}

#[derive(Debug, clap::Args)]
pub struct DrainArgs {
    #[command(flatten)]
    pub db: crate::config::DbArgs,
    #[command(flatten)]
    pub kafka: crate::config::KafkaArgs,
    /// The dead-letter topic.
    #[arg(long, env = "SPANSINK_DLQ_TOPIC", default_value = "spansink.dlq")]
    pub dlq_topic: String,
    /// How long one publish may wait for the broker.
    #[arg(long, env = "SPANSINK_DLQ_MESSAGE_TIMEOUT", value_parser = crate::config::parse_duration, default_value = "30s")]
    pub dlq_message_timeout: std::time::Duration,
}

/// Publishes, now, every entry the dead-letter ledger holds for this spool,
/// and discards the rest. The spool's lock makes sure that no instance is
/// using it: an instance's spool is drained by the instance itself, and a
/// spool left behind (a released volume) by this command.
async fn drain(dir: PathBuf, args: &DrainArgs) -> Result<String> {
    use std::sync::Arc;
    args.db.validate()?;
    args.kafka.check(crate::kafka::Client::DeadLetters)?;
    let spool = Arc::new(
        blocking::run("spool inspection", move || {
            Spool::open(crate::poison::spool::SpoolConfig {
                dir,
                max_entries: usize::MAX,
                max_bytes: u64::MAX,
            })
        })
        .await?,
    );
    let publisher = Arc::new(crate::poison::dlq::DlqPublisher::new(
        &crate::poison::dlq::DlqConfig {
            topic: args.dlq_topic.clone(),
            client: args.kafka.settings(),
            instance: crate::config::default_instance_id(),
            message_timeout: args.dlq_message_timeout,
        },
    )?);
    let pool = crate::pg::pool::connect(&args.db.settings()).await?;
    let forwarder = crate::poison::forward::Forwarder::new(spool, publisher, pool);
    // No process holds the spool: what the ledger does not hold for it never will.
    let discarded = forwarder.recover().await?;
    let report = forwarder.forward_once().await?;
    Ok(format!(
        "published {}, discarded {} (not this spool's dead letters), oversize {}, failed {}\n",
        report.published,
        discarded + report.discarded,
        report.oversize,
        report.failed
    ))
}

pub async fn run(args: &SpoolArgs) -> Result<()> {
    let dir = args.spool_dir.clone();
    let text = match &args.command {
        SpoolCommand::List => {
            blocking::run("spool inspection", move || {
                format_list(&Spool::open_read_only(&dir)?)
            })
            .await?
        }
        SpoolCommand::Show { id } => {
            let id = id.clone();
            blocking::run("spool inspection", move || {
                format_show(&Spool::open_read_only(&dir)?, &id)
            })
            .await?
        }
        SpoolCommand::Drain(drain_args) => drain(dir, drain_args).await?,
    };
    print(&text)
}

fn print(text: &str) -> Result<()> {
    match io::stdout().lock().write_all(text.as_bytes()) {
        // The reader (`| head`) has all it wanted.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map_err(|e| Error::io("writing to stdout", e)),
    }
}

/// `list`: one line per entry, oldest first, then a total line. An entry that
/// cannot be read is listed with the reason.
pub fn format_list(spool: &Spool) -> Result<String> {
    let entries = spool.list()?;
    let mut out = String::new();
    for info in &entries {
        let line = match spool.read(&info.id) {
            Ok(d) => list_line(info, &d),
            Err(e) => format!(
                "{}  {}  {} bytes  unreadable: {}",
                info.id,
                rfc3339(info.created),
                info.bytes,
                printable(&e.to_string())
            ),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out.push_str(&total_line(&entries, spool.quarantined()?, spool.dir()));
    out.push('\n');
    Ok(out)
}

fn list_line(info: &EntryInfo, d: &DeadLetter) -> String {
    format!(
        "{}  {}  {} bytes  {}/{}@{}  tenant={}  stage={}  reason={}",
        info.id,
        rfc3339(info.created),
        info.bytes,
        printable(&d.topic),
        d.partition,
        d.offset,
        printable(d.tenant.as_deref().unwrap_or("-")),
        printable(&d.stage),
        printable(&d.reason),
    )
}

fn total_line(entries: &[EntryInfo], quarantined: usize, dir: &Path) -> String {
    let bytes: u64 = entries.iter().map(|e| e.bytes).sum();
    let mut line = format!("{} entries, {bytes} bytes", entries.len());
    if let Some(oldest) = entries.iter().map(|e| e.created).min() {
        let _ = write!(line, ", oldest {}", rfc3339(oldest));
    }
    if quarantined > 0 {
        let _ = write!(
            line,
            "; {quarantined} damaged file(s) in {}",
            dir.join("quarantine").display()
        );
    }
    line
}

/// `show ID`: every field of one entry, one per line.
pub fn format_show(spool: &Spool, id: &str) -> Result<String> {
    let d = spool.read(id)?;
    let info = spool.list()?.into_iter().find(|e| e.id == id);
    Ok(show_text(&d, info.as_ref()))
}

fn show_text(d: &DeadLetter, info: Option<&EntryInfo>) -> String {
    let optional = |v: Option<&str>| printable(v.unwrap_or("-")).into_owned();
    let mut fields: Vec<(&str, String)> = vec![
        ("id", printable(&d.id).into_owned()),
        ("group", printable(&d.group).into_owned()),
        ("topic", printable(&d.topic).into_owned()),
        ("partition", d.partition.to_string()),
        ("offset", d.offset.to_string()),
        ("timestamp", d.timestamp_ms.map_or("-".into(), unix_ms)),
        ("key", d.key.as_deref().map_or("-".into(), preview)),
        ("tenant", optional(d.tenant.as_deref())),
        ("stage", printable(&d.stage).into_owned()),
        ("reason", printable(&d.reason).into_owned()),
        ("error", printable(&d.error).into_owned()),
        ("sqlstate", optional(d.sqlstate.as_deref())),
        ("attempts", d.attempts.to_string()),
        ("first failure", unix_ms(d.first_failure_unix_ms)),
        ("instance", printable(&d.instance).into_owned()),
        ("version", printable(&d.version).into_owned()),
        ("payload", preview(&d.payload)),
    ];
    if let Some(info) = info {
        fields.push(("spooled", rfc3339(info.created)));
        fields.push(("file bytes", info.bytes.to_string()));
    }
    let mut out = String::new();
    for (name, value) in fields {
        let _ = writeln!(out, "{:<16}{value}", format!("{name}:"));
    }
    let _ = writeln!(out, "headers:        {}", d.headers.len());
    for header in &d.headers {
        let _ = writeln!(out, "  {}", header_text(header));
    }
    out
}

/// `key=value`; a value that is not printable UTF-8 is shown as `hex:…`, and a
/// header without a value as the bare key.
pub fn header_text(header: &Header) -> String {
    let key = printable(&header.key);
    match header.value.as_deref() {
        None => key.into_owned(),
        Some(value) => match std::str::from_utf8(value) {
            Ok(text) if !text.chars().any(char::is_control) => format!("{key}={text}"),
            _ => format!("{key}=hex:{}", hex::encode(value)),
        },
    }
}

/// Size and the first bytes in hex.
fn preview(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(PAYLOAD_PREVIEW)];
    let more = if bytes.len() > shown.len() { "…" } else { "" };
    format!("{} bytes: {}{more}", bytes.len(), hex::encode(shown))
}

/// Control characters (a newline in an error text, an escape sequence in a
/// tenant) would corrupt the one-line-per-entry output or the terminal.
fn printable(text: &str) -> Cow<'_, str> {
    if text.chars().any(char::is_control) {
        Cow::Owned(text.escape_default().to_string())
    } else {
        Cow::Borrowed(text)
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn unix_ms(ms: i64) -> String {
    match u64::try_from(ms) {
        Ok(ms) => {
            humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
        }
        Err(_) => format!("{ms} ms since the epoch"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_that_are_not_text_are_hex() {
        let header = |value: Option<&[u8]>| Header {
            key: "k".into(),
            value: value.map(<[u8]>::to_vec),
        };
        assert_eq!(header_text(&header(Some(b"acme"))), "k=acme");
        assert_eq!(header_text(&header(Some(&[0xff, 0x00]))), "k=hex:ff00");
        assert_eq!(header_text(&header(Some(b"a\nb"))), "k=hex:610a62");
        assert_eq!(header_text(&header(None)), "k");
    }

    #[test]
    fn previews_are_cut_and_marked() {
        assert_eq!(preview(&[1, 2]), "2 bytes: 0102");
        let long = preview(&[0xab; 40]);
        assert!(long.starts_with("40 bytes: "));
        assert!(long.ends_with('…'));
        assert_eq!(long.matches("ab").count(), PAYLOAD_PREVIEW);
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("plain"), "plain");
        assert_eq!(printable("a\nb\u{1b}[0m"), "a\\nb\\u{1b}[0m");
    }

    #[test]
    fn timestamps_before_the_epoch_are_shown_raw() {
        assert_eq!(unix_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(unix_ms(-5), "-5 ms since the epoch");
    }
}
