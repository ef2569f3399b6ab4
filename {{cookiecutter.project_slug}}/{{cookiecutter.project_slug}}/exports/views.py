from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from .csv_export import ExportRunner
from .models import EARLIEST_DAY, LATEST_DAY, ExportJob, TooManyExports


class ExportForm(forms.ModelForm):
    """The export's parameters: an optional range of days, checked by the model's own rules."""

    class Meta:
        model = ExportJob
        fields = ["date_from", "date_to"]
        # The browser's date picker offers only the days the model accepts.
        widgets = {
            name: forms.DateInput(attrs={"type": "date", "min": EARLIEST_DAY, "max": LATEST_DAY}) for name in fields
        }


def own_job(request, pk) -> ExportJob:
    # Filtering by owner makes someone else's export a 404, not a 403: its
    # existence is none of their business either.
    return get_object_or_404(ExportJob, pk=pk, user=request.user)


def render_list(request, form, status=200):
    jobs = ExportJob.objects.filter(user=request.user)[:20]
    return render(request, "exports/list.html", {"jobs": jobs, "form": form}, status=status)


@login_required
def export_list(request):
    return render_list(request, ExportForm())


# --8<-- [start:start-export]
@login_required
@require_POST
def start_export(request):
    form = ExportForm(request.POST)
    if not form.is_valid():
        return render_list(request, form, status=400)
    try:
        # Row-locks the user, reuses the same export if it is under way, enforces
        # EXPORT_MAX_RUNNING_PER_USER, dispatches after commit (models.py).
        job, created = ExportJob.request(request.user, **form.cleaned_data)
    except TooManyExports as refusal:
        messages.error(request, f"Export not started: {refusal}.")
        return render_list(request, form, status=429)
    if not created:
        messages.info(request, f"Export {job.pk} with these settings is already under way: here it is.")
    return redirect("exports:detail", pk=job.pk)
    # --8<-- [end:start-export]


@login_required
def export_detail(request, pk):
    return render(request, "exports/detail.html", {"job": own_job(request, pk)})


# --8<-- [start:cancel-export]
@login_required
@require_POST
def cancel_export(request, pk):
    job = own_job(request, pk)
    if ExportJob.cancel(job.pk, request.user):
        # A live runner stops at its next checkpoint and cleans up after itself;
        # this covers a job that was still queued, or whose runner died.
        ExportRunner.delete_parts(job)
        messages.success(request, f"Export {job.pk} cancelled.")
    else:
        job.refresh_from_db()
        messages.error(request, f"Export {job.pk} is already {job.get_status_display().lower()}: nothing to cancel.")
    return redirect("exports:detail", pk=job.pk)
    # --8<-- [end:cancel-export]


# --8<-- [start:progress]
@login_required
def export_progress(request, pk):
    """What the progress bar polls: rows done of total, rate, ETA, download link, or why it failed.

    A stalled job (its runner died: ``ExportJob.is_stalled``) has no ETA: nobody
    is writing, and the rate only falls until a new runner resumes it.
    """
    job = own_job(request, pk)
    elapsed = ((job.finished_at or timezone.now()) - job.started_at).total_seconds() if job.started_at else 0
    rate = job.processed_rows / elapsed if elapsed > 0 else 0.0
    remaining = max((job.total_rows or 0) - job.processed_rows, 0)
    done = job.status == ExportJob.Status.COMPLETED
    stalled = job.is_stalled
    return JsonResponse(
        {
            "status": job.status,
            "stalled": stalled,
            "processed_rows": job.processed_rows,
            "total_rows": job.total_rows,
            "percent": 100.0 if done else round(job.progress * 100, 1),
            "rows_per_second": round(rate),
            "eta_seconds": 0 if done else (round(remaining / rate) if rate and not stalled else None),
            "download_url": reverse("exports:download", args=[job.pk]) if done else None,
            "error": job.error if job.status == ExportJob.Status.FAILED else "",
        }
    )
    # --8<-- [end:progress]


@login_required
def download_export(request, pk):
    job = own_job(request, pk)
    if job.status != ExportJob.Status.COMPLETED or not job.file:
        raise Http404("export not finished")
    # Streamed from whatever storage holds it (local disk, S3) through Django.
    return FileResponse(job.file.open("rb"), as_attachment=True, filename=f"transactions-{job.pk}.csv")
