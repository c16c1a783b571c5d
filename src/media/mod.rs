//! Real MP4 files: encoding, probing and stitching.
