module replayproxy.test/goclient

go 1.19
