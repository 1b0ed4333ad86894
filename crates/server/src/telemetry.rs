//! Logs and, when asked for, traces: the server's `tracing` output goes to
//! stderr (lines for people or JSON), filtered as RUST_LOG says; with an
//! OTLP endpoint, spans also go to an OpenTelemetry collector over gRPC.
//!
//! Tracing export is off by default and costs nothing then: no layer is
//! installed, and the debug-level spans around each call stay disabled.
//! When on, its own filter (`--otlp-filter`) decides which spans are
//! exported, independently of what is logged.

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// What to log and export.
#[derive(Clone, Debug)]
pub struct TelemetryConfig {
    /// The log filter (RUST_LOG syntax).
    pub log_filter: String,
    /// JSON lines instead of lines for people.
    pub json: bool,
    /// Colours in the lines for people.
    pub ansi: bool,
    /// Where to export spans (`http://collector:4317`); `None`: nowhere.
    pub otlp_endpoint: Option<String>,
    /// Which spans to export (RUST_LOG syntax).
    pub otlp_filter: String,
}

/// The installed telemetry; [`Telemetry::shutdown`] sends the spans still
/// waiting.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Installs the global subscriber. With an OTLP endpoint, it must be
    /// called inside a Tokio runtime (the exporter's gRPC client needs it).
    pub fn init(config: &TelemetryConfig) -> anyhow::Result<Telemetry> {
        let filter =
            tracing_subscriber::EnvFilter::try_new(&config.log_filter).with_context(|| {
                format!(
                    "bad log filter {:?} (--log, FLEET_HEALTH_LOG or RUST_LOG)",
                    config.log_filter
                )
            })?;
        let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
        let fmt = if config.json {
            fmt.json().with_filter(filter).boxed()
        } else {
            fmt.with_ansi(config.ansi).with_filter(filter).boxed()
        };
        let (otel, provider) = match &config.otlp_endpoint {
            None => (None, None),
            Some(endpoint) => {
                let filter = tracing_subscriber::EnvFilter::try_new(&config.otlp_filter)
                    .with_context(|| format!("bad --otlp-filter {:?}", config.otlp_filter))?;
                let exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint.clone())
                    .build()
                    .with_context(|| format!("cannot export traces to {endpoint}"))?;
                let provider = SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(
                        opentelemetry_sdk::Resource::builder()
                            .with_service_name("fleet-health-server")
                            .build(),
                    )
                    .build();
                let tracer = provider.tracer("fleet-health-server");
                let layer = tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(filter)
                    .boxed();
                (Some(layer), Some(provider))
            }
        };
        tracing_subscriber::registry()
            .with(fmt)
            .with(otel)
            .try_init()
            .context("cannot install the log subscriber")?;
        if let Some(endpoint) = &config.otlp_endpoint {
            tracing::info!(%endpoint, filter = %config.otlp_filter, "exporting traces over OTLP");
        }
        Ok(Telemetry { provider })
    }

    /// Sends the spans still waiting and stops exporting.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("fleet-health-server: sending the last traces failed: {e}");
        }
    }
}
