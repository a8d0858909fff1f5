//! The Connectivity Hub: a relay both sites dial out to. Not built yet (issue: hub link).
