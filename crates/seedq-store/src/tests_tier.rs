//! [`Tier`] in and out of the `service_tier` column on both backends (the conversions are
//! `seedq_core::tier_sql`): written as its wire string, and a value that is neither tier read
//! back as an error naming it.

use crate::tier::Tier;
use crate::{NewJob, testpg};

/// The error and every source below it, as `{:#}` would print them.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

#[tokio::test]
async fn tiers_round_trip_through_the_column_and_unknown_text_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, s) in testpg::both(dir.path()).await {
        // Jobs of both tiers come back as the tier they were stored as.
        let mut flex = NewJob::plain(r#"{"model":"m"}"#);
        flex.flex = true;
        let plain = NewJob::plain(r#"{"model":"m"}"#);
        let (fid, pid) = (flex.id.to_string(), plain.id.to_string());
        s.enqueue(vec![flex, plain]).await.expect("enqueue");
        let f = s.job(&fid).await.expect("read").expect("flex job");
        let p = s.job(&pid).await.expect("read").expect("default job");
        assert_eq!(
            (f.service_tier, p.service_tier),
            (Tier::Flex, Tier::Default),
            "{name}"
        );

        // A bound Tier is its wire string; text that is not a tier fails naming the value.
        let (text, bad) = if let Some(pg) = s.pg() {
            let c = pg.conn().await.expect("connection");
            let row = c
                .query_one("SELECT $1::TEXT, 'turbo'::TEXT", &[&Tier::Flex])
                .await
                .expect("select");
            let text: String = row.get(0);
            let bad = row.try_get::<_, Tier>(1).map(|_| ()).map_err(|e| chain(&e));
            (text, bad)
        } else {
            s.call(|c| {
                let mut st = c.prepare("SELECT ?1, 'turbo'")?;
                Ok(st.query_row([Tier::Flex], |r| {
                    let text: String = r.get(0)?;
                    let bad = r.get::<_, Tier>(1).map(|_| ()).map_err(|e| chain(&e));
                    Ok((text, bad))
                })?)
            })
            .await
            .expect("select")
        };
        assert_eq!(text, "flex", "{name}");
        let e = bad.expect_err("turbo is not a tier");
        assert!(
            e.contains("\"turbo\"") && e.contains("default, flex"),
            "{name}: {e}"
        );
    }
}
