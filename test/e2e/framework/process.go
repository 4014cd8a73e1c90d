package framework

import (
	"os/exec"
	"runtime"
	"sync"
	"syscall"
)

// StartChild starts cmd so that it cannot outlive this process: it gets
// SIGKILL as a parent-death signal, whatever way this process dies (a test
// binary's -timeout, SIGKILL, a closed output pipe). It also runs in its own
// process group, so a terminal's Ctrl-C reaches only this process, which stops
// its children in order. Every long-lived child of the test tiers (agents, the
// restarted apiserver and etcd, benchmark baselines) is started this way.
func StartChild(cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	return startFromLastingThread(cmd)
}

// The parent-death signal fires when the thread that forked the child exits,
// not the process; Go ends threads whenever a goroutine exits while locked to
// one. So children are forked from one goroutine that locks its thread and
// never returns: their Pdeathsig fires only when this process dies.
var spawner struct {
	once sync.Once
	ch   chan func()
}

func startFromLastingThread(cmd *exec.Cmd) error {
	spawner.once.Do(func() {
		spawner.ch = make(chan func())
		go func() {
			runtime.LockOSThread()
			for f := range spawner.ch {
				f()
			}
		}()
	})
	errc := make(chan error, 1)
	spawner.ch <- func() { errc <- cmd.Start() }
	return <-errc
}
