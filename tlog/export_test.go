package tlog

// PeakBuffered returns the most bytes of entry bundles c's Entries held
// at once.
func PeakBuffered(c *TileClient) int64 { return c.peakBuffered.Load() }
