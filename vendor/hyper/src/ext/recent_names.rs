//! Portcullis patch: field names kept by place, so that a name read again in the same place
//! is not parsed again (see `RecentNames`).

use http::header::{HeaderName, InvalidHeaderName};

/// The field names of the last heads read, by place. Peers send the same names in the
/// same order on every message, so a name whose bytes match the one kept in its place is
/// cloned from here instead of being parsed again (`HeaderName::from_bytes`: ~100
/// instructions a name, and an allocation for one that is not a standard name). At most
/// [`RecentNames::PLACES`] names of at most [`RecentNames::NAME_LEN`] bytes are kept.
///
/// hyper's server keeps one per thread for request heads; the gateway's own HTTP/1
/// client keeps one per upstream connection for response heads.
#[derive(Debug, Default)]
pub struct RecentNames(Vec<(Box<[u8]>, HeaderName)>);

impl RecentNames {
    /// Places kept: a head with more fields parses the rest.
    pub const PLACES: usize = 32;
    /// Longer names are parsed each time.
    pub const NAME_LEN: usize = 64;

    /// None kept yet.
    pub const fn new() -> Self {
        RecentNames(Vec::new())
    }

    /// The name at `place` of a head, spelled `raw`. Inline: it is on every field of
    /// every head, and a call costs it a third more.
    #[inline]
    pub fn get(&mut self, place: usize, raw: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
        if let Some((spelled, name)) = self.0.get(place) {
            if **spelled == *raw {
                return Ok(name.clone());
            }
        }
        let name = HeaderName::from_bytes(raw)?;
        if raw.len() <= Self::NAME_LEN {
            let entry = (Box::from(raw), name.clone());
            if place < self.0.len() {
                self.0[place] = entry;
            } else if place == self.0.len() && place < Self::PLACES {
                self.0.push(entry);
            }
        }
        Ok(name)
    }

    /// The name kept at `place`, if any.
    pub fn kept(&self, place: usize) -> Option<&HeaderName> {
        self.0.get(place).map(|(_, name)| name)
    }

    /// How many places hold a name.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No place holds a name.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
