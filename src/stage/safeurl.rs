//! Which result URLs seedq may download: the guard against a forged or hostile `video_url`.
//!
//! A URL Ark hands out is fetched without auth and its bytes are filed as the job's video, so
//! a URL pointing inside our network (the admin server's `/metrics`, a cloud metadata
//! endpoint) would be archived as an ".mp4". A download therefore follows only
//! `https` URLs whose host is not private, loopback or link-local; redirects are checked by the
//! same rule (a custom redirect policy), and host names are resolved by a resolver that drops
//! such addresses, so DNS cannot point a public name inward.
//!
//! Two exceptions: the origin of `ark.base_url` when that is loopback (the simulator serves
//! its files there over plain http), and the hosts in `archive.download_allow` (an operator's
//! explicit trust, e.g. an internal mirror).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use url::{Host, Url};

use crate::config::Config;

/// Redirects followed before a download gives up.
const MAX_REDIRECTS: usize = 10;

/// The download rule; see the module docs.
#[derive(Clone, Debug, Default)]
pub struct UrlPolicy {
    /// `(host, port)` of a loopback `ark.base_url`: the simulator's own file server.
    sim_origin: Option<(String, u16)>,
    /// `archive.download_allow`, lower-cased: `host` or `host:port`.
    allow: Vec<String>,
}

impl UrlPolicy {
    /// The policy for `cfg` (`ark.base_url`, `archive.download_allow`).
    pub fn from_config(cfg: &Config) -> Self {
        let sim_origin = Url::parse(&cfg.ark.base_url).ok().and_then(|u| {
            let host = u.host()?;
            let loopback = match host {
                Host::Ipv4(ip) => ip.is_loopback(),
                Host::Ipv6(ip) => ip.is_loopback(),
                Host::Domain(d) => is_localhost(d),
            };
            loopback.then(|| (host_key(&u), u.port_or_known_default().unwrap_or(0)))
        });
        Self {
            sim_origin,
            allow: cfg
                .archive
                .download_allow
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
        }
    }

    fn allowed(&self, host: &str, port: u16) -> bool {
        self.allow
            .iter()
            .any(|a| a == host || *a == format!("{host}:{port}"))
    }

    fn is_sim(&self, host: &str, port: u16) -> bool {
        self.sim_origin
            .as_ref()
            .is_some_and(|(h, p)| h == host && *p == port)
    }

    /// Whether a host name's resolved addresses need no filtering.
    fn trusts_name(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        self.allow
            .iter()
            .any(|a| a == &name || a.rsplit_once(':').is_some_and(|(h, _)| h == name))
            || self.sim_origin.as_ref().is_some_and(|(h, _)| *h == name)
    }

    /// Checks one URL (the first one, or a redirect's target).
    ///
    /// # Errors
    /// Why the URL is refused, naming it.
    pub fn check(&self, url: &Url) -> Result<(), String> {
        let refuse = |why: &str| Err(format!("refusing to download {url}: {why}"));
        if !matches!(url.scheme(), "http" | "https") {
            return refuse("only https URLs are downloaded");
        }
        let Some(host) = url.host() else {
            return refuse("the URL has no host");
        };
        let key = host_key(url);
        let port = url.port_or_known_default().unwrap_or(0);
        if self.allowed(&key, port) || self.is_sim(&key, port) {
            return Ok(());
        }
        if url.scheme() != "https" {
            return refuse(
                "only https URLs are downloaded (add the host to archive.download_allow to trust it)",
            );
        }
        let public = match host {
            Host::Ipv4(ip) => is_public(IpAddr::V4(ip)),
            Host::Ipv6(ip) => is_public(IpAddr::V6(ip)),
            Host::Domain(d) => !is_localhost(d),
        };
        if !public {
            return refuse(
                "the host is private, loopback or link-local (add it to archive.download_allow to trust it)",
            );
        }
        Ok(())
    }

    /// Parses and checks `url`.
    ///
    /// # Errors
    /// The URL does not parse or is refused.
    pub fn check_str(&self, url: &str) -> Result<Url, String> {
        let u = Url::parse(url).map_err(|e| format!("refusing to download {url:?}: {e}"))?;
        self.check(&u)?;
        Ok(u)
    }

    /// Applies the rule to a client: redirects are checked, and names resolve only to public
    /// addresses (unless trusted).
    pub fn guard(self: &Arc<Self>, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        let policy = Arc::clone(self);
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
            }
            match policy.check(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(why) => attempt.error(format!("redirect {why}")),
            }
        });
        builder
            .redirect(redirects)
            .dns_resolver(Arc::new(PublicResolver(Arc::clone(self))))
    }
}

/// A resolver that drops private, loopback and link-local addresses of untrusted names.
struct PublicResolver(Arc<UrlPolicy>);

impl reqwest::dns::Resolve for PublicResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let name = name.as_str().to_string();
        let trusted = self.0.trusts_name(&name);
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
                .await?
                .filter(|a| trusted || is_public(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!(
                    "{name} resolves to no public address; refusing to download from it"
                )
                .into());
            }
            let it: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(it)
        })
    }
}

/// A download client (connect and per-read timeouts, no total timeout: a large video takes as
/// long as it takes) with the rule applied.
///
/// # Errors
/// The client cannot be built.
pub fn download_client(cfg: &Config) -> anyhow::Result<(reqwest::Client, Arc<UrlPolicy>)> {
    let policy = Arc::new(UrlPolicy::from_config(cfg));
    let builder = reqwest::Client::builder()
        .connect_timeout(cfg.ark.connect_timeout)
        .read_timeout(cfg.ark.request_timeout)
        .user_agent(concat!("seedq/", env!("CARGO_PKG_VERSION")));
    let client = policy
        .guard(builder)
        .build()
        .map_err(|e| anyhow::anyhow!("building the download client: {e}"))?;
    Ok((client, policy))
}

/// The host as compared with the allow-list: lower case, IPv6 without brackets.
fn host_key(url: &Url) -> String {
    match url.host() {
        Some(Host::Ipv6(ip)) => ip.to_string(),
        Some(h) => h.to_string().to_ascii_lowercase(),
        None => String::new(),
    }
}

fn is_localhost(d: &str) -> bool {
    let d = d.trim_end_matches('.').to_ascii_lowercase();
    d == "localhost" || d.ends_with(".localhost")
}

/// Not private, loopback, link-local, unspecified, shared (CGNAT), multicast, broadcast,
/// documentation or reserved.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (RFC 6598)
        || (a == 198 && (b == 18 || b == 19)) // benchmarking (RFC 2544)
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || (first == 0x2001 && ip.segments()[1] == 0x0db8)) // documentation
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(base: &str, allow: &[&str]) -> Arc<UrlPolicy> {
        let mut cfg = Config::default();
        cfg.ark.base_url = base.into();
        cfg.archive.download_allow = allow.iter().map(|s| (*s).to_string()).collect();
        Arc::new(UrlPolicy::from_config(&cfg))
    }

    #[test]
    fn only_public_https_is_followed() {
        let p = policy("https://ark.cn-beijing.volces.com/api/v3", &[]);
        let ok = |u: &str| p.check_str(u).is_ok();
        assert!(ok("https://ark-content.example.com/v.mp4?X-Tos-Expires=1"));
        assert!(ok("https://8.8.8.8/v.mp4"));
        assert!(!ok("http://ark-content.example.com/v.mp4"), "plain http");
        assert!(!ok("https://127.0.0.1:9187/metrics"));
        assert!(!ok("https://localhost/x"));
        assert!(!ok("https://10.1.2.3/x"));
        assert!(!ok("https://192.168.0.1/x"));
        assert!(!ok("https://172.16.5.5/x"));
        assert!(!ok("https://169.254.169.254/latest/meta-data/"));
        assert!(!ok("https://100.64.0.1/x"));
        assert!(!ok("https://0.0.0.0/x"));
        assert!(!ok("https://[::1]/x"));
        assert!(!ok("https://[fe80::1]/x"));
        assert!(!ok("https://[fd00::1]/x"));
        assert!(!ok("https://[::ffff:127.0.0.1]/x"));
        assert!(!ok("file:///etc/passwd"));
    }

    #[test]
    fn a_loopback_base_url_trusts_only_its_own_origin() {
        let p = policy("http://127.0.0.1:8787/api/v3", &[]);
        assert!(p.check_str("http://127.0.0.1:8787/files/v.mp4").is_ok());
        assert!(p.check_str("http://127.0.0.1:9187/metrics").is_err());
        assert!(p.check_str("http://10.0.0.1:8787/files/v.mp4").is_err());
    }

    #[test]
    fn the_allow_list_trusts_hosts_and_host_ports() {
        let p = policy(
            "https://ark.cn-beijing.volces.com/api/v3",
            &["mirror.internal", "10.0.0.5:9000"],
        );
        assert!(p.check_str("http://mirror.internal/v.mp4").is_ok());
        assert!(p.check_str("http://10.0.0.5:9000/v.mp4").is_ok());
        assert!(p.check_str("http://10.0.0.5:9001/v.mp4").is_err());
        assert!(p.trusts_name("mirror.internal"));
        assert!(!p.trusts_name("other.internal"));
    }

    /// A real redirect over loopback: the allowed origin answers 302 to another local port
    /// (the admin server's `/metrics` in the attack); the download must fail, not follow.
    #[tokio::test]
    async fn a_redirect_to_a_private_host_is_refused() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let secret = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let secret_port = secret.local_addr().expect("addr").port();
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let h = Arc::clone(&hits);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = secret.accept().await {
                h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecret")
                    .await;
            }
        });
        let origin = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = origin.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = origin.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{secret_port}/metrics\r\nContent-Length: 0\r\n\r\n"
                );
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        let mut cfg = Config::default();
        cfg.ark.base_url = format!("http://127.0.0.1:{port}/api/v3");
        let (client, policy) = download_client(&cfg).expect("client");
        let url = format!("http://127.0.0.1:{port}/files/v.mp4");
        policy
            .check_str(&url)
            .expect("the sim's own origin is allowed");
        let err = client
            .get(&url)
            .send()
            .await
            .expect_err("the redirect must be refused");
        assert!(err.is_redirect(), "{err:?}");
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    }
}
