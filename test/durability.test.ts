/**
 * What snapfs promises about durability and the daemon's life: data closed (or fsynced while its
 * file stays open) survives a SIGKILL of the daemon; `snapfs umount` and SIGTERM flush, unmount
 * and end the daemon with code 0; a mount left by a killed daemon answers ENOTCONN until a new
 * `snapfs mount` or `snapfs umount --force` clears it; and a background mount returns once the
 * mount answers and stops with `snapfs umount`. In the core: the commit of a close is left for
 * the next flush (LMDB syncs its pages, not its meta page), and an fsync's own commit is flushed.
 */
import t from 'tap'
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { Store } from '../src/store/store.js'
import { LiveVolume } from '../src/fs/volume.js'
import { errnoOf, freshStore, FSTYPE, mountFresh, mountsAt, pidsMentioning, run, snapfs, sha } from './helpers/mount.js'

t.setTimeout(10 * 60_000)

const MiB = 1024 * 1024
// The longest dirty age allowed, longer than each test: the timer does not write dirty pages
// back, so only the step under test (close, fsync, umount, SIGTERM) can have persisted them.
const HOLD_DIRTY = ['--dirty-age', '60s']

t.test('data closed and synced survives kill -9 of the daemon', async t => {
  const m = await mountFresh(t, HOLD_DIRTY)
  const data = randomBytes(5 * MiB)
  await writeFile(join(m.mnt, 'closed'), data)
  t.equal((await run('sync', [])).code, 0, 'sync')
  await m.kill9()
  const again = await m.remount()
  t.equal(sha(await readFile(join(again.mnt, 'closed'))), sha(data), 'the same 5 MiB after remount')
})

t.test('files written 100 at a time and closed keep the times they showed through kill -9 and a remount', async t => {
  const m = await mountFresh(t, HOLD_DIRTY)
  const names = Array.from({ length: 400 }, (_, i) => `f${i}`)
  for (let i = 0; i < names.length; i += 100) {
    await Promise.all(names.slice(i, i + 100).map(async name => { await writeFile(join(m.mnt, name), `${name}\n`) }))
  }
  t.equal((await run('sync', [])).code, 0, 'sync')
  const times = async (mnt: string): Promise<string[]> => await Promise.all(names.map(async name => {
    const st = await stat(join(mnt, name), { bigint: true })
    return `${name} ${st.size} ${st.mtimeNs} ${st.ctimeNs}`
  }))
  const before = await times(m.mnt)
  await m.kill9()
  const again = await m.remount()
  const after = await times(again.mnt)
  t.same(after.filter((line, i) => line !== before[i]), [], 'every file has the size, mtime and ctime it showed before the kill')
})

t.test('data fsynced by a writer that never closed survives kill -9 of the daemon', async t => {
  const m = await mountFresh(t, HOLD_DIRTY)
  const file = join(m.mnt, 'held-open')
  // The writer writes 5 MiB in 64 KiB pieces, fsyncs, reports the hash and waits, fd open.
  const writer = spawn(process.execPath, ['-e', `
    const fs = require('node:fs')
    const crypto = require('node:crypto')
    const data = crypto.randomBytes(5 * 1024 * 1024)
    const fd = fs.openSync(process.argv[1], 'w')
    for (let off = 0; off < data.length; off += 65536) fs.writeSync(fd, data, off, 65536, off)
    fs.fsyncSync(fd)
    process.stdout.write('synced ' + crypto.createHash('sha256').update(data).digest('hex') + '\\n')
    setInterval(() => {}, 60000)
  `, file], { stdio: ['ignore', 'pipe', 'pipe'] })
  t.teardown(() => { writer.kill('SIGKILL') })
  let complaint = ''
  writer.stderr.on('data', (b: Buffer) => { complaint += b.toString() })
  const said = await new Promise<string>((resolve, reject) => {
    let out = ''
    writer.stdout.on('data', (b: Buffer) => {
      out += b.toString()
      if (out.includes('\n')) resolve(out)
    })
    writer.once('exit', code => reject(new Error(`the writer exited with ${code} before fsync: ${complaint}`)))
  })
  const [word, hash] = said.trim().split(' ')
  t.equal(word, 'synced', 'the writer fsynced')
  t.equal(writer.exitCode, null, 'the writer still holds the file open')
  await m.kill9()
  writer.kill('SIGKILL')
  await once(writer, 'exit')
  const again = await m.remount()
  const back = await readFile(join(again.mnt, 'held-open'))
  t.equal(back.length, 5 * MiB, 'the size after remount')
  t.equal(sha(back), hash, 'the fsynced bytes after remount')
})

t.test('a close is committed and left for the next flush; an fsync flushes, with no extra transaction for its own commit', async t => {
  const dir = await mkdtemp('/var/tmp/snapfs-durability-')
  const store = await Store.init(join(dir, 'store'))
  t.teardown(async () => {
    await store.close()
    await rm(dir, { recursive: true, force: true })
  })
  const volume = new LiveVolume(store, store.volume('main'), { cacheBytes: 16 * MiB, dirtyAgeMs: 60_000 })
  const file = volume.mknod(1, 'f', 0o100644, 0, { uid: 0, gid: 0 })
  await volume.write(file.ino, 0, Buffer.from('closed'))
  await volume.flush(file.ino)
  t.ok(store.unflushed, 'the commit of the close waits for the next flush')
  await volume.fsync()
  t.notOk(store.unflushed, 'an fsync flushes it')
  let extra = 0
  const advance = store.advance.bind(store)
  store.advance = () => { extra++; advance() }
  await volume.write(file.ino, 0, Buffer.from('synced'))
  await volume.fsync()
  t.notOk(store.unflushed, 'the fsync left nothing unflushed')
  t.equal(extra, 0, "the fsync's own commit was flushed as it committed")
})

t.test('snapfs umount flushes, unmounts and ends the daemon with code 0', async t => {
  const m = await mountFresh(t, HOLD_DIRTY)
  const data = randomBytes(3 * MiB + 123)
  await writeFile(join(m.mnt, 'kept'), data)
  t.equal(await m.umount(), 0, 'the daemon exits with code 0')
  t.same(await mountsAt(m.mnt), [], 'nothing is mounted any more')
  const again = await m.remount()
  t.equal(sha(await readFile(join(again.mnt, 'kept'))), sha(data), 'the data after remount')
})

t.test('SIGTERM to the daemon flushes, unmounts and exits with code 0', async t => {
  const m = await mountFresh(t, HOLD_DIRTY)
  const data = randomBytes(2 * MiB + 5)
  await writeFile(join(m.mnt, 'termed'), data)
  const exited = once(m.child, 'exit')
  m.child.kill('SIGTERM')
  const [code, signal] = await exited
  t.same({ code, signal }, { code: 0, signal: null }, 'the daemon exits with code 0')
  t.same(await mountsAt(m.mnt), [], 'nothing is mounted any more')
  const again = await m.remount()
  t.equal(sha(await readFile(join(again.mnt, 'termed'))), sha(data), 'the data after remount')
})

t.test('a mount left by a killed daemon answers ENOTCONN until mount or umount --force clears it', async t => {
  const m = await mountFresh(t)
  await writeFile(join(m.mnt, 'before'), 'written before the kill')
  let exited = once(m.child, 'exit')
  m.child.kill('SIGKILL')
  await exited
  t.equal((await mountsAt(m.mnt)).length, 1, 'the dead mount is still listed')
  const ls = await run('ls', [m.mnt])
  t.not(ls.code, 0, 'ls fails')
  t.match(ls.stderr, /Transport endpoint is not connected/, 'ls reports the dead daemon')
  t.equal(await errnoOf(() => readdir(m.mnt)), 'ENOTCONN', 'readdir fails with ENOTCONN')

  const again = await m.remount()
  const entries = await mountsAt(again.mnt)
  t.same(entries.map(e => e.fstype), [FSTYPE], 'a new mount replaced the dead one, none stacked')
  t.equal(await readFile(join(again.mnt, 'before'), 'utf8'), 'written before the kill', 'the closed file is there')

  exited = once(again.child, 'exit')
  again.child.kill('SIGKILL')
  await exited
  t.equal(await errnoOf(() => stat(join(again.mnt, 'before'))), 'ENOTCONN', 'dead again')
  const force = await snapfs(['umount', '--force', again.mnt])
  t.equal(force.code, 0, `snapfs umount --force succeeds ${force.stderr}`)
  t.same(await mountsAt(again.mnt), [], 'nothing is mounted any more')
  t.same(await readdir(again.mnt), [], 'the mount point is an empty directory again')
})

t.test('a background mount returns once the mount answers, and snapfs umount stops it', async t => {
  const s = await freshStore(t)
  // The daemon must not keep the caller's output open, or `$(snapfs mount ...)` would hang.
  const mounted = await snapfs(['mount', s.store, s.mnt], { timeoutMs: 30_000 })
  t.equal(mounted.code, 0, `snapfs mount exits 0 ${mounted.stderr}`)
  t.same((await mountsAt(s.mnt)).map(e => e.fstype), [FSTYPE], 'mounted when the command returns')
  await writeFile(join(s.mnt, 'bg'), 'in the background')
  t.equal(await readFile(join(s.mnt, 'bg'), 'utf8'), 'in the background', 'the mount answers')
  const daemons = await pidsMentioning(s.dir)
  t.ok(daemons.length > 0, `a daemon runs (pids ${daemons.join(', ')})`)
  const unmounted = await snapfs(['umount', s.mnt])
  t.equal(unmounted.code, 0, `snapfs umount exits 0 ${unmounted.stderr}`)
  t.same(await mountsAt(s.mnt), [], 'nothing is mounted any more')
  let left = daemons
  for (let waited = 0; left.length > 0 && waited < 15_000; waited += 100) {
    await sleep(100)
    const now = await pidsMentioning(s.dir)
    left = left.filter(pid => now.includes(pid))
  }
  t.same(left, [], 'the daemon has exited')
})
