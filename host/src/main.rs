//! The `allot` binary.

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    anyhow::bail!("the Allot server is not assembled yet; see README.md")
}
