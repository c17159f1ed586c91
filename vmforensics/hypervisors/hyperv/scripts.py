r"""The reviewed PowerShell scripts HyperVAcquirer runs on a Hyper-V host — and nothing else.

Every script is a constant: its text never changes at run time, so the SHA-256 recorded in the
custody ledger names exactly the code that ran. Values (VM ids and names, checkpoint names, file
paths) reach a script only as data: a base64-encoded JSON object in the shell's environment
variable ``VMFORENSICS_ARGS``, decoded by the script's first lines. A VM called
``x'; Remove-Item C:\ -Recurse; '`` is a string the script compares, never code it runs.

Each script prints one ``ConvertTo-Json`` document. A failure is caught by the ``trap`` and printed
as ``{"vmforensics_error": {category, error_id, exception, message}}`` with exit status 1, so that
the caller can tell "VM not found" from "access denied". Enumerations and dates are converted to
strings in the script (Windows PowerShell 5.1 would otherwise print numbers and ``\/Date()\/``).
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import attrs

ARGUMENTS_VARIABLE = "VMFORENSICS_ARGS"

_PRELUDE = r"""$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
[Console]::OutputEncoding = [Text.Encoding]::UTF8
trap {
  $e = $_
  [Console]::Out.Write((@{ vmforensics_error = [ordered]@{ category = $e.CategoryInfo.Category.ToString()
    error_id = $e.FullyQualifiedErrorId; exception = $e.Exception.GetType().FullName
    message = $e.Exception.Message } } | ConvertTo-Json -Compress -Depth 4))
  exit 1
}
$a = [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String($env:VMFORENSICS_ARGS)) | ConvertFrom-Json
function Emit($value) { [Console]::Out.Write((ConvertTo-Json -InputObject $value -Compress -Depth 8)) }
function Iso($t) { if ($null -eq $t) { $null } else { $t.ToUniversalTime().ToString('o') } }
"""


def as_list(value: Any) -> list[Any]:
    """A list field of a script's output: ConvertTo-Json prints a one-element array as the element
    and an empty one as null."""
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


@attrs.frozen
class Script:
    """One reviewed script: its name (for logs and the ledger) and its exact text."""

    name: str
    body: str = attrs.field(repr=False)

    @property
    def text(self) -> str:
        return _PRELUDE + self.body

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @property
    def encoded(self) -> str:
        """The text as ``powershell.exe -EncodedCommand`` takes it (base64 of UTF-16LE)."""
        return base64.b64encode(self.text.encode("utf-16-le")).decode("ascii")


def encode_arguments(arguments: dict[str, object]) -> str:
    """The data a script reads from ``$env:VMFORENSICS_ARGS``: base64 of UTF-8 JSON."""
    import json

    return base64.b64encode(json.dumps(arguments, ensure_ascii=False).encode("utf-8")).decode("ascii")


HOST = Script(
    "host",
    r"""$os = Get-CimInstance -ClassName Win32_OperatingSystem
$h = Get-VMHost
$vmms = Get-Item -LiteralPath (Join-Path $env:SystemRoot 'System32\vmms.exe')
Emit ([ordered]@{ computer_name = $env:COMPUTERNAME; fqdn = $h.FullyQualifiedDomainName
  os_caption = $os.Caption; os_version = $os.Version; os_build = $os.BuildNumber
  hyperv_version = $vmms.VersionInfo.ProductVersion; virtual_machine_path = $h.VirtualMachinePath
  virtual_hard_disk_path = $h.VirtualHardDiskPath; utc_now = Iso (Get-Date) })
""",
)

CLOCK = Script(
    "clock",
    r"""Emit ([ordered]@{ utc_now = Iso (Get-Date) })
""",
)

#: ``Chain($path)``: a VHD and its parents, top first (at most 64); a parent Get-VHD cannot open ends
#: the chain with ``{path, error}``. Used by IDENTIFY and by the survey's inventory.
VHD_CHAIN_FUNCTION = r"""function Chain($p) {
  $n = 0
  while ($p -and $n -lt 64) {
    $n++
    try { $v = Get-VHD -Path $p } catch { [ordered]@{ path = $p; error = $_.Exception.Message }; break }
    [ordered]@{ path = $v.Path; vhd_format = $v.VhdFormat.ToString(); vhd_type = $v.VhdType.ToString()
      size = $v.Size; file_size = $v.FileSize; parent_path = $v.ParentPath; disk_identifier = $v.DiskIdentifier }
    $p = $v.ParentPath
  }
}
"""

IDENTIFY = Script(
    "identify",
    r"""if ($a.id) { $found = @(Get-VM -Id $a.id) } else { $found = @(Get-VM | Where-Object { $_.Name -eq $a.name }) }
if ($found.Count -ne 1) {
  Emit ([ordered]@{ vm = $null; candidates = @($found | ForEach-Object {
    [ordered]@{ id = $_.Id.ToString(); name = $_.Name; state = $_.State.ToString() } }) })
  exit 0
}
$vm = $found[0]
"""
    + VHD_CHAIN_FUNCTION
    + r"""Emit ([ordered]@{ candidates = @(); vm = [ordered]@{
  name = $vm.Name; id = $vm.Id.ToString(); state = $vm.State.ToString(); generation = $vm.Generation
  version = $vm.Version; path = $vm.Path; configuration_location = $vm.ConfigurationLocation
  snapshot_file_location = $vm.SnapshotFileLocation; smart_paging_file_path = $vm.SmartPagingFilePath
  checkpoint_type = $vm.CheckpointType.ToString(); computer_name = $vm.ComputerName; is_clustered = $vm.IsClustered }
  network_adapters = @(Get-VMNetworkAdapter -VM $vm | ForEach-Object { [ordered]@{ name = $_.Name
    mac_address = $_.MacAddress; switch_name = $_.SwitchName; dynamic_mac_address_enabled = $_.DynamicMacAddressEnabled
    connected = $_.Connected; ip_addresses = @($_.IPAddresses) } })
  hard_drives = @(Get-VMHardDiskDrive -VM $vm | ForEach-Object { [ordered]@{ controller_type = $_.ControllerType.ToString()
    controller_number = $_.ControllerNumber; controller_location = $_.ControllerLocation; path = $_.Path; chain = @(Chain $_.Path) } })
  snapshots = @(Get-VMSnapshot -VM $vm | ForEach-Object { [ordered]@{ id = $_.Id.ToString(); name = $_.Name
    snapshot_type = $_.SnapshotType.ToString(); creation_time = Iso $_.CreationTime; parent_snapshot_id = $_.ParentSnapshotId
    path = $_.Path; hard_drives = @($_.HardDrives | ForEach-Object { $_.Path }) } }) })
""",
)

EVENTS = Script(
    "events",
    r"""$id = (Get-VM -Id $a.id).Id.ToString()
$events = @()
foreach ($log in 'Microsoft-Windows-Hyper-V-VMMS-Admin', 'Microsoft-Windows-Hyper-V-High-Availability-Admin') {
  try { $events += @(Get-WinEvent -LogName $log -MaxEvents 5000 | Where-Object { $_.Message -like "*$id*" } |
      Select-Object -First 200 | ForEach-Object { [ordered]@{ log = $log; time_created = Iso $_.TimeCreated
        event_id = $_.Id; level = $_.LevelDisplayName; message = $_.Message } }) } catch { }
}
Emit ([ordered]@{ events = $events })
""",
)

SET_CHECKPOINT_TYPE = Script(
    "set-checkpoint-type",
    r"""$vm = Get-VM -Id $a.id
$before = $vm.CheckpointType.ToString()
Set-VM -VM $vm -CheckpointType $a.checkpoint_type
Emit ([ordered]@{ before = $before; after = (Get-VM -Id $a.id).CheckpointType.ToString() })
""",
)

CHECKPOINT = Script(
    "checkpoint",
    r"""$vm = Get-VM -Id $a.id
$s = Checkpoint-VM -VM $vm -SnapshotName $a.name -Passthru
Emit ([ordered]@{ id = $s.Id.ToString(); name = $s.Name; snapshot_type = $s.SnapshotType.ToString()
  creation_time = Iso $s.CreationTime; path = $s.Path; state = (Get-VM -Id $a.id).State.ToString() })
""",
)

SAVE = Script(
    "save",
    r"""$vm = Get-VM -Id $a.id
Save-VM -VM $vm
Emit ([ordered]@{ state = (Get-VM -Id $a.id).State.ToString() })
""",
)

START = Script(
    "start",
    r"""$vm = Get-VM -Id $a.id
Start-VM -VM $vm
Emit ([ordered]@{ state = (Get-VM -Id $a.id).State.ToString() })
""",
)

ISOLATE = Script(
    "isolate",
    r"""$vm = Get-VM -Id $a.id
$adapters = @(Get-VMNetworkAdapter -VM $vm)
$was = @($adapters | ForEach-Object { [ordered]@{ name = $_.Name; mac_address = $_.MacAddress; switch_name = $_.SwitchName } })
if ($adapters.Count -gt 0) { Disconnect-VMNetworkAdapter -VMNetworkAdapter $adapters }
Emit ([ordered]@{ disconnected = $was })
""",
)

REMOVE_CHECKPOINT = Script(
    "remove-checkpoint",
    r"""$vm = Get-VM -Id $a.id
$s = @(Get-VMSnapshot -VM $vm | Where-Object { $_.Id.ToString() -eq $a.snapshot_id })
if ($s.Count -ne 1) {
  Write-Error -Category ObjectNotFound -ErrorId 'VMForensicsCheckpointNotFound' -Message 'the checkpoint to remove is gone'
}
Remove-VMSnapshot -VMSnapshot $s[0]
Emit ([ordered]@{ removed = $a.snapshot_id; state = (Get-VM -Id $a.id).State.ToString() })
""",
)

#: Every file Hyper-V names for the VM. A parent disk carries ``named_by`` (the disk whose
#: ``Get-VHD`` ParentPath names it) and ``reference`` (that ParentPath exactly); a change-tracking
#: file carries ``named_by`` (its disk). ``roots`` are the folders Hyper-V itself names for the VM
#: (configuration, snapshot and smart-paging locations, attached and checkpoint disks); which
#: names lie beneath them is decided in Python (files.py), never here.
ENUMERATE = Script(
    "enumerate",
    r"""$vm = Get-VM -Id $a.id
$id = $vm.Id.ToString()
$out = [Collections.Generic.List[object]]::new()
$seen = @{}
function Add($p, $kind, $by, $ref) {
  if (-not $p -or $seen.ContainsKey($p.ToLowerInvariant())) { return }
  $seen[$p.ToLowerInvariant()] = 1
  try { $i = Get-Item -LiteralPath $p -Force
    $out.Add([ordered]@{ path = $i.FullName; kind = $kind; size = $i.Length; last_write_utc = Iso $i.LastWriteTime; missing = $null
      named_by = $by; reference = $ref }) }
  catch { $out.Add([ordered]@{ path = $p; kind = $kind; size = $null; last_write_utc = $null; missing = $_.Exception.Message
      named_by = $by; reference = $ref }) }
}
function Owned($dir, $prefix, $kind) {
  if (-not $dir -or -not (Test-Path -LiteralPath $dir)) { return }
  Get-ChildItem -LiteralPath $dir -File -Force | Where-Object { $_.Name.StartsWith($prefix, 'OrdinalIgnoreCase') } |
    ForEach-Object { Add $_.FullName $kind }
  $sub = Join-Path $dir $prefix
  if (Test-Path -LiteralPath $sub) { Get-ChildItem -LiteralPath $sub -File -Recurse -Force | ForEach-Object { Add $_.FullName $kind } }
}
Owned (Join-Path $vm.ConfigurationLocation 'Virtual Machines') $id 'configuration'
$snaps = @(Get-VMSnapshot -VM $vm)
foreach ($s in $snaps) { Owned (Join-Path $vm.SnapshotFileLocation 'Snapshots') $s.Id.ToString() 'checkpoint' }
$disks = @(Get-VMHardDiskDrive -VM $vm | ForEach-Object { $_.Path }) + @($snaps | ForEach-Object { $_.HardDrives | ForEach-Object { $_.Path } })
foreach ($d in $disks) {
  $p = $d; $n = 0; $by = $null; $ref = $null
  while ($p -and $n -lt 64) {
    $n++
    Add $p 'disk' $by $ref
    foreach ($ext in '.rct', '.mrt') { foreach ($c in ($p + $ext), [IO.Path]::ChangeExtension($p, $ext)) {
      if (Test-Path -LiteralPath $c) { Add $c 'change-tracking' $p $null } } }
    try { $ref = (Get-VHD -Path $p).ParentPath; $by = $p; $p = $ref } catch { $p = $null }
  }
}
Owned $vm.SmartPagingFilePath $id 'smart-paging'
Emit ([ordered]@{ files = $out.ToArray(); roots = [ordered]@{ configuration_location = $vm.ConfigurationLocation
  snapshot_file_location = $vm.SnapshotFileLocation; smart_paging_file_path = $vm.SmartPagingFilePath
  disks = @($disks | Where-Object { $_ }) } })
""",
)

FILE_HASH = Script(
    "file-hash",
    r"""$h = Get-FileHash -LiteralPath $a.path -Algorithm SHA256
Emit ([ordered]@{ path = $h.Path; algorithm = $h.Algorithm; hash = $h.Hash })
""",
)

#: Every script the library may send, by name.
ALL: dict[str, Script] = {
    s.name: s
    for s in (
        HOST,
        CLOCK,
        IDENTIFY,
        EVENTS,
        SET_CHECKPOINT_TYPE,
        CHECKPOINT,
        SAVE,
        START,
        ISOLATE,
        REMOVE_CHECKPOINT,
        ENUMERATE,
        FILE_HASH,
    )
}
