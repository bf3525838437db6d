//! A `kube::Client` for the fake (feature `client`).

use crate::server::FakeApiServer;

impl FakeApiServer {
    /// A client for this server (plain HTTP, default namespace `default`). Call it inside a Tokio runtime: the
    /// client's service runs there.
    pub fn client(&self) -> kube::Client {
        let url = self.url().parse::<http::Uri>().expect("the fake's URL is a valid URI");
        let mut config = kube::Config::new(url);
        config.default_namespace = "default".to_owned();
        kube::Client::try_from(config).expect("a plain-HTTP client needs no TLS setup")
    }
}
