//! The broker a bench round reads from: librdkafka's mock cluster in a
//! process of its own (so that serving fetches is not counted as spansink's
//! CPU), or a broker the operator names.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};

use clap::Args;

use crate::error::{Error, Result};
use crate::kafka::mock::MockKafka;

/// `spansink mock-broker`: hosts a mock cluster until its standard input
/// closes. Hidden: the bench starts it.
#[derive(Debug, Clone, Args)]
pub struct MockBrokerArgs {
    /// The topic to create.
    #[arg(long, env = "SPANSINK_MOCK_BROKER_TOPIC")]
    pub topic: String,
    /// Its partitions.
    #[arg(long, env = "SPANSINK_MOCK_BROKER_PARTITIONS", default_value_t = 1)]
    pub partitions: i32,
}

/// Runs the hidden `mock-broker` command: prints `bootstrap=<servers>`, then
/// serves until standard input closes (the bench ended or died).
pub fn serve(args: &MockBrokerArgs) -> Result<()> {
    let kafka = MockKafka::start(1)?;
    kafka.create_topic(&args.topic, args.partitions)?;
    println!("bootstrap={}", kafka.bootstrap_servers());
    let mut sink = String::new();
    while std::io::stdin()
        .read_line(&mut sink)
        .map_err(|e| Error::io("reading standard input", e))?
        > 0
    {
        sink.clear();
    }
    Ok(())
}

/// A broker for one round.
pub enum Broker {
    /// A mock cluster in a child process; it stops when its stdin is dropped.
    Child {
        child: Child,
        _stdin: ChildStdin,
        bootstrap: String,
    },
    /// The operator's broker.
    External { bootstrap: String },
}

impl Broker {
    pub fn spawn(topic: &str, partitions: i32) -> Result<Broker> {
        let exe = std::env::current_exe().map_err(|e| Error::io("finding spansink", e))?;
        let mut child = Command::new(exe)
            .args(["mock-broker", "--topic", topic])
            .arg(format!("--partitions={partitions}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| Error::io("starting the mock broker", e))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let (Some(stdin), Some(stdout)) = (stdin, stdout) else {
            return Err(Error::Internal(
                "the mock broker's pipes are missing".into(),
            ));
        };
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| Error::io("reading the mock broker's address", e))?;
        let bootstrap = line
            .trim()
            .strip_prefix("bootstrap=")
            .ok_or_else(|| Error::Internal(format!("the mock broker said {line:?}")))?
            .to_string();
        Ok(Broker::Child {
            child,
            _stdin: stdin,
            bootstrap,
        })
    }

    pub fn bootstrap(&self) -> &str {
        match self {
            Broker::Child { bootstrap, .. } | Broker::External { bootstrap } => bootstrap,
        }
    }

    /// Whether it forgets old messages (the mock keeps about 5 MiB per
    /// partition): production must then wait for consumption.
    pub fn is_bounded(&self) -> bool {
        matches!(self, Broker::Child { .. })
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Broker::Child { child, .. } = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
