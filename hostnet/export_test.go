package hostnet

// MacIndex exposes the MAC cache's index function to the tests.
var MacIndex = macIndex
