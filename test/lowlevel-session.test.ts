/**
 * The FUSE transport on libfuse 3's low-level API (src/fuse/lowlevel/, native/src/fuse_session.c)
 * carries what the kernel and the daemon say to each other intact: files are created, listed,
 * renamed with renameat2's flags and removed; times keep their nanoseconds; 64-bit inode numbers
 * and the caller's uid reach their places; a 1 MiB write arrives as one request; a handler that
 * throws costs its request EIO and nothing else; an interrupted request can be answered EINTR;
 * SIGTERM unmounts. The daemon is scripts/null-fs-native.ts, in a child process.
 */
import t from 'tap'
import { chmod, mkdir, readdir, rm, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { errnoOf, mountsAt, mountScript, renameat2, run, type ScriptMount } from './helpers/mount.js'

t.setTimeout(60_000)

const DAEMON = 'null-fs-native.js'
const FSTYPE = 'fuse.nullfs'
const MIB = 1024 * 1024

let m: ScriptMount
t.before(async () => { m = await mountScript(t, DAEMON, FSTYPE, ['--allow-other']) })

t.test('files and directories are created, listed, stat\'ed and removed', async t => {
  const dir = join(m.mnt, 'basic')
  await mkdir(dir)
  await writeFile(join(dir, 'a'), 'hello')
  await writeFile(join(dir, 'b'), Buffer.alloc(10_000))
  await mkdir(join(dir, 'sub'))
  const listed = await readdir(dir, { withFileTypes: true })
  t.same(listed.map(e => [e.name, e.isDirectory()]).sort(), [['a', false], ['b', false], ['sub', true]], 'readdir lists names and types')
  t.equal((await stat(join(dir, 'b'))).size, 10_000, 'a write extends the size')
  t.equal((await stat(dir)).nlink, 3, 'a subdirectory adds a link to its parent')
  await rm(join(dir, 'a'))
  await rm(join(dir, 'sub'), { recursive: true })
  t.same(await readdir(dir), ['b'], 'removed names are gone')
  t.equal(await errnoOf(() => stat(join(dir, 'a'))), 'ENOENT', 'a removed file is not found')
})

t.test('rename honours RENAME_NOREPLACE and RENAME_EXCHANGE', async t => {
  const dir = join(m.mnt, 'rename')
  await mkdir(dir)
  const [a, b] = [join(dir, 'a'), join(dir, 'b')]
  await writeFile(a, Buffer.alloc(10))
  await writeFile(b, Buffer.alloc(20))
  const [inoA, inoB] = [(await stat(a)).ino, (await stat(b)).ino]
  t.equal(await renameat2(a, b, 1), 'EEXIST', 'NOREPLACE onto an existing name fails with EEXIST')
  t.equal((await stat(b)).ino, inoB, 'and leaves the target alone')
  t.equal(await renameat2(a, b, 2), 'ok', 'EXCHANGE succeeds')
  t.same([(await stat(a)).ino, (await stat(a)).size], [inoB, 20], 'the first name now holds the second file')
  t.same([(await stat(b)).ino, (await stat(b)).size], [inoA, 10], 'the second name now holds the first file')
  t.equal(await renameat2(a, join(dir, 'missing'), 2), 'ENOENT', 'EXCHANGE with a missing name fails with ENOENT')
})

t.test('times keep their nanoseconds', async t => {
  const file = join(m.mnt, 'times')
  await writeFile(file, '')
  const touched = await run('touch', ['-m', '-d', '@981173106.123456789', file])
  t.equal(touched.code, 0, touched.stderr)
  t.equal((await stat(file, { bigint: true })).mtimeNs, 981173106123456789n, 'mtime comes back to the nanosecond')
})

t.test('inode numbers above 2^32 reach st_ino, shared by hard links', async t => {
  const file = join(m.mnt, 'big-ino')
  await writeFile(file, 'x')
  const ino = (await stat(file, { bigint: true })).ino
  t.ok(ino > 2n ** 32n, `st_ino ${ino} is above 2^32`)
  const linked = await run('ln', [file, join(m.mnt, 'big-ino-link')])
  t.equal(linked.code, 0, linked.stderr)
  t.equal((await stat(join(m.mnt, 'big-ino-link'), { bigint: true })).ino, ino, 'a hard link has the same st_ino')
  t.equal((await stat(file)).nlink, 2, 'and the file counts two links')
})

t.test('a new file belongs to the user who created it', async t => {
  const dir = join(m.mnt, 'shared')
  await mkdir(dir)
  await chmod(dir, 0o777)
  const file = join(dir, 'mine')
  const made = await run('setpriv', ['--reuid=1234', '--regid=1234', '--clear-groups', 'touch', file])
  t.equal(made.code, 0, made.stderr)
  const st = await stat(file)
  t.same([st.uid, st.gid], [1234, 1234], 'owned by the caller\'s uid and gid')
})

t.test('a 1 MiB write arrives as one request', async t => {
  const written = await run('dd', ['if=/dev/zero', `of=${join(m.mnt, 'mebibyte')}`, `bs=${MIB}`, 'count=1', 'conv=fsync'])
  t.equal(written.code, 0, written.stderr)
  const largest = await run('getfattr', ['--only-values', '-n', 'user.null.maxwrite', m.mnt])
  t.equal(largest.code, 0, largest.stderr)
  t.equal(Number(largest.stdout), MIB, 'the largest write request the daemon saw is 1 MiB')
})

t.test('a handler that throws answers EIO and the mount goes on', async t => {
  t.equal(await errnoOf(() => stat(join(m.mnt, '.null-throw'))), 'EIO', 'the failing lookup gets EIO')
  const reported = /the lookup handler failed: Error: a lookup of \.null-throw/
  // The daemon's stderr reaches this process a moment after the answer does.
  for (let waited = 0; !reported.test(m.output()) && waited < 2000; waited += 20) await sleep(20)
  t.match(m.output(), reported, 'the error is reported')
  await writeFile(join(m.mnt, 'after-throw'), 'still here')
  t.equal((await stat(join(m.mnt, 'after-throw'))).size, 10, 'later requests are served')
})

t.test('an interrupted request is answered EINTR', async t => {
  // SIGALRM's handler raises, so the stat ends as soon as the daemon answers the interrupted lookup.
  const script = [
    'import os, signal, sys',
    'class Alarm(Exception): pass',
    'def ring(*_): raise Alarm()',
    'signal.signal(signal.SIGALRM, ring)',
    'signal.setitimer(signal.ITIMER_REAL, 0.2)',
    'try:',
    '    os.stat(sys.argv[1])',
    "    print('answered')",
    'except Alarm:',
    "    print('interrupted')"
  ].join('\n')
  const result = await run('python3', ['-c', script, join(m.mnt, '.null-hang-1')], { timeoutMs: 10_000 })
  t.equal(result.stdout.trim(), 'interrupted', 'the caller got its interrupted system call back')
  t.equal((await stat(m.mnt)).isDirectory(), true, 'the mount still answers')
})

t.test('SIGTERM unmounts and the daemon exits 0', async t => {
  t.equal(await m.umount(), 0, 'exit code 0')
  t.same(await mountsAt(m.mnt), [], 'nothing is mounted any more')
})
